// split_k_workspace.h: the workspaces, kept for the life of the process (a few MiB per stream
// that ran a split-K kernel), like the CUDA streams they serve.
#include "split_k_workspace.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <utility>

#include "check_text.h"

namespace inception_fast {
namespace {

// Partials: one 128 x 64 fp32 tile (32 KiB) per output tile and range but the last; where
// gemm_routing.split_k_count asks for split-K, tiles times ranges fill no more than the SMs (132
// on an H100: 4.1 MiB at most). Locks: two per tile.
constexpr int64_t kPartialBytes = int64_t{8} << 20;
constexpr int64_t kLockBytes = int64_t{64} << 10;

struct Entry {
  at::Tensor buffer;
  bool zeroed = false;                 // outside a capture
  unsigned long long capture_id = 0;   // the last capture that zeroed it (0: none)
};

std::mutex mutex;
std::map<std::pair<c10::DeviceIndex, cudaStream_t>, Entry> workspaces;

}  // namespace

SplitKWorkspace split_k_workspace(c10::DeviceIndex device, cudaStream_t stream) {
  const std::lock_guard<std::mutex> lock(mutex);
  Entry& entry = workspaces[{device, stream}];
  if (!entry.buffer.defined()) {
    // Inside a capture the caching allocator takes it from the graph's pool; held here, it stays.
    const c10::cuda::CUDAGuard guard(device);
    entry.buffer = at::empty({kPartialBytes + kLockBytes}, at::TensorOptions().dtype(at::kByte).device(
                                                              at::Device(at::kCUDA, device)));
  }
  char* locks = static_cast<char*>(entry.buffer.data_ptr()) + kPartialBytes;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long capture_id = 0;
  OP_CHECK(cudaStreamGetCaptureInfo(stream, &status, &capture_id) == cudaSuccess,
           "split-K: cannot ask whether the stream is capturing");
  const bool capturing = status == cudaStreamCaptureStatusActive;
  if (capturing ? entry.capture_id != capture_id : !entry.zeroed) {
    OP_CHECK(cudaMemsetAsync(locks, 0, kLockBytes, stream) == cudaSuccess, "split-K: cannot zero the workspace");
    if (capturing) {
      entry.capture_id = capture_id;
    } else {
      entry.zeroed = true;
    }
  }
  return {locks, kPartialBytes, kLockBytes};
}

}  // namespace inception_fast
