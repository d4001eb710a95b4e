// The 1x1-conv GEMM in bf16, every tile shape (128 x 64, 128 x 128, 128 x 256, 64 x 64) and its
// split-K kernel in one file: most of a CUTLASS file's compile time is parsing its headers, paid once
// per file.
#include "gemm_conv1x1.cuh"

namespace inception_fast {

INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kBFloat16, __nv_bfloat16, 64)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kBFloat16, __nv_bfloat16, 128)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kBFloat16, __nv_bfloat16, 256)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1_NARROW(kBFloat16, __nv_bfloat16)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1_SPLIT_K(kBFloat16, __nv_bfloat16)

}  // namespace inception_fast
