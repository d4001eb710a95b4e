// The 1x1-conv GEMM in fp16, every tile shape (128 x 64, 128 x 128, 128 x 256, 64 x 64) and its
// split-K kernel in one file: most of a CUTLASS file's compile time is parsing its headers, paid once
// per file.
#include "gemm_conv1x1.cuh"

namespace inception_fast {

INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kHalf, __half, 64)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kHalf, __half, 128)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kHalf, __half, 256)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1_NARROW(kHalf, __half)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1_SPLIT_K(kHalf, __half)

}  // namespace inception_fast
