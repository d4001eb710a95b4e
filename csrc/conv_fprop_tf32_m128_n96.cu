// fp32 on TF32 tensor cores, 128 x 96 tiles of the k x k convolution on the CUTLASS sm90
// implicit GEMM: one instantiation per file, so ninja compiles them in parallel.
#include "conv_fprop.cuh"

namespace inception_fast {

template <>
const char* launch_conv_fprop<ConvDtype::kTf32, 128, 96>(const ConvFpropArgs& args, cudaStream_t stream) {
  return conv_fprop::launch<float, 128, 96>(args, stream);
}

}  // namespace inception_fast
