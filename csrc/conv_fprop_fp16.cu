// fp16 k x k convolutions on the CUTLASS sm90 implicit GEMM: one instantiation per file, so ninja
// compiles them in parallel.
#include "conv_fprop.cuh"

namespace inception_fast {

template <>
const char* launch_conv_fprop<ConvDtype::kHalf>(const ConvFpropArgs& args, cudaStream_t stream) {
  return conv_fprop::launch<__half>(args, stream);
}

}  // namespace inception_fast
