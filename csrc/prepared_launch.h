// A CUTLASS kernel launch prepared once and issued again without redoing the host work: the
// kernel's Params (its TMA descriptors encoded for the buffers' addresses), grid, block, shared
// memory and cluster shape. The ops prepare and issue at once; a launch program
// (launch_program.cpp) keeps each prepared launch and issues it again while the buffers'
// addresses are unchanged. Plain data: included by the .cu files that must not see torch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>

namespace inception_fast {

struct PreparedLaunch {
  // Room for the largest Params of the kernels built (conv_fprop's: three tensor maps and the
  // problem); checked at compile time where a Params is stored.
  static constexpr size_t kMaxParamBytes = 2048;
  const void* function = nullptr;  // the kernel's host stub (kernel_entry<Kernel>)
  dim3 grid, block;
  int smem_bytes = 0;
  int cluster_m = 1;  // CTAs per cluster along M
  alignas(128) unsigned char params[kMaxParamBytes];

  template <class Params>
  void store(const Params& value) {
    static_assert(sizeof(Params) <= kMaxParamBytes, "a kernel's Params outgrew PreparedLaunch::kMaxParamBytes");
    static_assert(alignof(Params) <= 128, "a kernel's Params needs more alignment than PreparedLaunch gives");
    std::memcpy(params, &value, sizeof(Params));
  }
};

// Issues `prepared` on `stream`, with programmatic dependent launch where `pdl` (the kernels wait
// for the kernel before them ahead of their first global access, see kernel_entry); nullptr on
// success.
inline const char* launch_prepared(const PreparedLaunch& prepared, cudaStream_t stream, bool pdl) {
  cudaLaunchAttribute attributes[2];
  unsigned count = 0;
  if (prepared.cluster_m > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = prepared.cluster_m;
    attributes[count].val.clusterDim.y = 1;
    attributes[count].val.clusterDim.z = 1;
    ++count;
  }
  if (pdl) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = prepared.grid;
  config.blockDim = prepared.block;
  config.dynamicSmemBytes = prepared.smem_bytes;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  void* args[1] = {const_cast<unsigned char*>(prepared.params)};
  const cudaError_t err = cudaLaunchKernelExC(&config, prepared.function, args);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace inception_fast
