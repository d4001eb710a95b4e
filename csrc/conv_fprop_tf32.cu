// The k x k convolution on the CUTLASS sm90 implicit GEMM in fp32 on TF32 tensor cores, every
// tile shape built for it in one file: most of a CUTLASS file's compile time is parsing its
// headers, paid once per file (the five fp16 kernels compile in 2.1x the time of one alone).
#include "conv_fprop.cuh"

namespace inception_fast {

INCEPTION_FAST_CONV_TILES_128_ROWS(INCEPTION_FAST_DEFINE_CONV_FPROP, kTf32, float)

}  // namespace inception_fast
