// bf16 instantiation of the stage kernel (one dtype per file so ninja compiles them in parallel).
#include "conv_stage.cuh"

namespace inception_fast {

cudaError_t launch_conv_stage_bf16(const StageArgs& args, cudaStream_t stream) {
  return stage_kernel::launch<__nv_bfloat16>(args, stream);
}

}  // namespace inception_fast
