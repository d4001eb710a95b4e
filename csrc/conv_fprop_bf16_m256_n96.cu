// bf16, 256 x 96 tiles (cooperative) of the k x k convolution on the CUTLASS sm90
// implicit GEMM: one instantiation per file, so ninja compiles them in parallel.
#include "conv_fprop.cuh"

namespace inception_fast {

template <>
const char* launch_conv_fprop<ConvDtype::kBFloat16, 256, 96>(const ConvFpropArgs& args, cudaStream_t stream) {
  return conv_fprop::launch<__nv_bfloat16, 256, 96>(args, stream);
}

}  // namespace inception_fast
