// The 1x1-conv GEMM in fp32 on TF32 tensor cores, every tile width (128 x 64, 128 x 128, 128 x 256) in one
// file: most of a CUTLASS file's compile time is parsing its headers, paid once per file.
#include "gemm_conv1x1.cuh"

namespace inception_fast {

INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kTf32, float, 64)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kTf32, float, 128)
INCEPTION_FAST_DEFINE_GEMM_CONV1X1(kTf32, float, 256)

}  // namespace inception_fast
