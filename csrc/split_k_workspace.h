// The workspace of the split-K kernels (split_k_scheduler.cuh): one per device and stream, like
// cuBLAS's, so kernels on one stream share it (one after another) and kernels on two streams
// never do. Every kernel leaves its lock array zero; it is zeroed where that cannot be known:
// once before its first kernel outside a CUDA graph capture, and inside each capture that uses
// it (a memset in the graph: the graph may replay before or without any kernel outside it).
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace inception_fast {

struct SplitKWorkspace {
  void* locks = nullptr;      // where the lock array starts
  int64_t partial_bytes = 0;  // room for fp32 partials below `locks`
  int64_t lock_bytes = 0;     // room for locks from `locks` on
};

// The workspace of `stream` on `device` for a kernel about to be issued on it, made the first
// time it is asked for.
SplitKWorkspace split_k_workspace(c10::DeviceIndex device, cudaStream_t stream);

}  // namespace inception_fast
