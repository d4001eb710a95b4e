// The k x k convolution on the CUTLASS sm90 implicit GEMM in fp16, every tile shape built for it
// and its split-K kernel in one file: most of a CUTLASS file's compile time is parsing its
// headers, paid once per file (the five fp16 kernels compile in 2.1x the time of one alone).
#include "conv_fprop.cuh"

namespace inception_fast {

INCEPTION_FAST_CONV_TILES_16BIT(INCEPTION_FAST_DEFINE_CONV_FPROP, kHalf, __half)
INCEPTION_FAST_DEFINE_CONV_FPROP_SPLIT_K(kHalf, __half)

}  // namespace inception_fast
