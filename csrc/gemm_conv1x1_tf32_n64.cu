// fp32 on TF32 tensor cores, 128 x 64 tiles of the 1x1-conv GEMM: one instantiation per file, so
// ninja compiles them in parallel.
#include "gemm_conv1x1.cuh"

namespace inception_fast {

template <>
const char* launch_gemm_conv1x1<GemmDtype::kTf32, 64>(const GemmConv1x1Args& args, cudaStream_t stream) {
  return gemm_conv1x1::launch<float, 64>(args, stream);
}

}  // namespace inception_fast
