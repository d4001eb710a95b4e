"""The packed stage format: its host-side helpers and the rules the packer enforces."""

import pytest
import torch
import torch.nn.functional as F

from inception_fast import packing as pk
from inception_fast.modules import fuse_block
from inception_fast.plan import (
    AVG,
    AVG_INCLUDE_PAD,
    INPUT,
    MAX,
    OUTPUT,
    WORK,
    Conv,
    GlobalAvgPool,
    Pool,
    Slice,
    Write,
)
from inception_fast.reference import InceptionA
from inception_fast.testing import randomize_batchnorm
from inception_fast.windows import out_size

# --- The packed format's rules -----------------------------------------------------------------

ROW = {  # a valid row of each kind: 16 channels, columns from 0
    "max": [pk.MAX_POOL, pk.BUF_INPUT, 0, 16, 16, 3, 3, 2, 0, 0, -1, 0, 0],
    "avg_include_pad": [pk.AVG_POOL_INCLUDE_PAD, pk.BUF_INPUT, 0, 16, 16, 3, 3, 1, 1, 1, -1, 0, 0],
    "conv1x1": [pk.CONV, pk.BUF_INPUT, 0, 16, 16, 1, 1, 1, 0, 0, 0, 0, 0],
}


def _with(row, **fields):
    row = list(ROW[row])
    for name, value in fields.items():
        row[getattr(pk, name)] = value
    return row


def _make(row, flags=pk.FLAG_TO_OUTPUT, in_channels=16):
    weights = [torch.zeros(16 * row[pk.KH] * row[pk.KW] * 16)] if row[pk.KIND] == pk.CONV else []
    return pk.make_stage([row], weights, [torch.zeros(16)], list(range(16)), [flags] * 16, "cpu",
                         torch.float32, in_channels=in_channels)


def test_out_size_is_pytorchs_pooling_rule():
    """Every size, window, stride, padding and rounding the kernels may see, against the output
    shapes of PyTorch's own pools (floor mode is also the conv rule)."""
    for size in range(1, 13):
        x = torch.zeros(1, 1, size, 1)
        for kernel in range(1, 8):
            for stride in (1, 2, 3):
                for pad in range(kernel // 2 + 1):
                    if size + 2 * pad < kernel:
                        continue
                    for ceil in (False, True):
                        pooled = F.max_pool2d(x, (kernel, 1), (stride, 1), (pad, 0), ceil_mode=ceil)
                        got = out_size(size, kernel, stride, pad, ceil)
                        assert got == pooled.shape[2], (size, kernel, stride, pad, ceil)


def test_ceil_changes_the_row_output_size():
    stage = _make(_with("max", CEIL=1))
    assert stage.output_hw(0, 8, 10) == (4, 5)  # floor mode: (3, 4)
    assert _make(ROW["max"]).output_hw(0, 8, 10) == (3, 4)
    assert stage.rows[0][pk.CEIL] == 1 and stage.problems.shape == (1, pk.NUM_FIELDS)


@pytest.mark.parametrize(
    "row,flags,match",
    [
        (_with("max", CEIL=2), pk.FLAG_TO_OUTPUT, "CEIL 2"),
        (_with("avg_include_pad", CEIL=1), pk.FLAG_TO_OUTPUT, "ceil_mode is for MAX_POOL and AVG_POOL"),
        (_with("conv1x1", CEIL=1), pk.FLAG_TO_OUTPUT, "ceil_mode is for MAX_POOL and AVG_POOL"),
        (_with("max", KIND=7), pk.FLAG_TO_OUTPUT, "unknown kind 7"),
        (_with("max", PAD_H=2), pk.FLAG_TO_OUTPUT, "exceeds half"),
        (ROW["max"][:-1], pk.FLAG_TO_OUTPUT, "has 12 fields"),
        (ROW["conv1x1"], pk.FLAG_TO_OUTPUT | 8, "unknown flag bits"),
        (ROW["conv1x1"], pk.FLAG_RESIDUAL, "must go to the block output"),
        (_with("conv1x1", STRIDE=2), pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL, "changes the size"),
        (_with("conv1x1", KH=3, KW=3), pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL, "changes the size"),
        (_with("conv1x1", KH=3, PAD_H=1, PAD_W=1), pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL, "changes the size"),
    ],
)
def test_packer_refuses_rows_the_kernels_cannot_run(row, flags, match):
    with pytest.raises(ValueError, match=match):
        _make(row, flags)


def test_residual_columns_must_name_an_input_channel():
    with pytest.raises(ValueError, match="block input has 8 channels"):
        _make(ROW["conv1x1"], pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL, in_channels=8)
    stage = _make(_with("conv1x1", KH=3, KW=3, PAD_H=1, PAD_W=1), pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL)
    assert stage.residual and not _make(ROW["conv1x1"]).residual


def test_plan_ops_map_to_problems():
    """Each plan op packs as its kind, window and column flags."""
    src, dst = Slice(INPUT, 0, 16), Slice(OUTPUT, 8, 24)
    assert pk._window(Pool(MAX, src, dst, (3, 3), 2)) == (pk.MAX_POOL, 3, 3, 2, 0, 0, 0)
    assert pk._window(Pool(MAX, src, dst, (3, 3), 2, ceil_mode=True)) == (pk.MAX_POOL, 3, 3, 2, 0, 0, 1)
    assert pk._window(Pool(AVG, src, dst, (3, 3), 1, (1, 1), bias=True)) == (pk.AVG_POOL, 3, 3, 1, 1, 1, 0)
    assert pk._window(Pool(AVG_INCLUDE_PAD, src, dst, (3, 3), 1, (1, 1)))[0] == pk.AVG_POOL_INCLUDE_PAD
    assert pk._window(GlobalAvgPool(src, dst), 8, 9) == (pk.AVG_POOL, 8, 9, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="input size"):
        pk._window(GlobalAvgPool(src, dst))
    conv = Conv(("c",), src, (1, 7), (Write(Slice(WORK, 0, 8)), Write(dst, residual=True)), padding=(0, 3))
    assert pk._window(conv) == (pk.CONV, 1, 7, 1, 0, 3, 0)
    flags = [f for _, f in pk._columns(conv)]
    assert flags == [pk.FLAG_RELU] * 8 + [pk.FLAG_RELU | pk.FLAG_TO_OUTPUT | pk.FLAG_RESIDUAL] * 16
    unbiased = Conv(("c",), src, (1, 1), (Write(dst, bias=False, relu=False),))
    assert [f for _, f in pk._columns(unbiased)] == [pk.FLAG_TO_OUTPUT] * 16


def test_stage_signature_names_the_work():
    block = fuse_block(randomize_batchnorm(InceptionA()).eval())
    signatures = [pk.stage_signature(s) for s in pk.pack_block(block, "cpu", torch.float32)]
    assert signatures[0] == "conv1x1s1p0.0:384>320"
    assert signatures[1] == "conv3x3s1p1.1:64>96+conv3x3s1p1.1:64>96+avg3x3s1p1.1:96>96"


def test_packed_inception_v4_stages_keep_floor_mode():
    block = fuse_block(randomize_batchnorm(InceptionA()).eval())
    for stage in pk.pack_block(block, "cpu", torch.float32):
        assert all(len(row) == pk.NUM_FIELDS and row[pk.CEIL] == 0 for row in stage.rows)
        assert not stage.residual


def test_packing_inside_a_capture_asks_for_a_warm_up_call(monkeypatch):
    """Packing copies tables from the host, which a CUDA graph capture cannot hold: a clear
    error instead of PyTorch's about pinned memory."""
    from inception_fast import graphs

    monkeypatch.setattr(graphs, "capturing", lambda: True)
    block = fuse_block(randomize_batchnorm(InceptionA()).eval())
    with pytest.raises(RuntimeError, match="call the model once at this shape outside the capture"):
        pk.pack_block(block, "cuda", torch.float16)
    assert pk.pack_block(block, "cpu", torch.float16)  # nothing to capture on the CPU
