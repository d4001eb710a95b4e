"""The layout of `packing`'s table: field indices, problem kinds, source buffers and column
flags (the format itself is described in `packing`'s docstring).

Apart from `packing` because the Triton kernels read these as compile-time constants, and a
compile worker imports the kernels without torch (`kernels/triton/compile_worker.py`);
`packing` re-exports every name here.
"""

CONV, AVG_POOL, MAX_POOL, AVG_POOL_INCLUDE_PAD = 0, 1, 2, 3
KINDS = (CONV, AVG_POOL, MAX_POOL, AVG_POOL_INCLUDE_PAD)
BUF_INPUT, BUF_WORK, BUF_OUTPUT = 0, 1, 2
FLAG_RELU, FLAG_TO_OUTPUT, FLAG_RESIDUAL = 1, 2, 4
ALL_FLAGS = FLAG_RELU | FLAG_TO_OUTPUT | FLAG_RESIDUAL
(KIND, SRC_BUF, SRC_C0, CIN, COLS, KH, KW, STRIDE, PAD_H, PAD_W, W_OFF, COL_OFF, CEIL) = range(13)
NUM_FIELDS = 13
