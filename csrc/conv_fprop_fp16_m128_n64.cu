// fp16, 128 x 64 tiles of the k x k convolution on the CUTLASS sm90 implicit GEMM: one
// instantiation per file, so ninja compiles them in parallel.
#include "conv_fprop.cuh"

namespace inception_fast {

template <>
const char* launch_conv_fprop<ConvDtype::kHalf, 128, 64>(const ConvFpropArgs& args, cudaStream_t stream) {
  return conv_fprop::launch<__half, 128, 64>(args, stream);
}

}  // namespace inception_fast
