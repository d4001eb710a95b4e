// A 1x1 convolution over an NHWC activation as one GEMM on Hopper (CUTLASS 3.x sm90 kernels:
// TMA loads, WGMMA, a warp-specialized producer), shared by the host bindings and the kernels.
// Plain data only: this header is included from .cu files that must not see torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace inception_fast {

// D[m, n] = act(sum_k A[m, k] * B[n, k] + bias[n]) with A = the activation [M, K] (K contiguous),
// B = the weight [N, K] (K contiguous) and D = rows of the output, ldd elements apart, starting
// at its channel slice (so the branch lands straight in the concatenation).
struct GemmConv1x1Args {
  const void* a;
  const void* b;
  const float* bias;
  void* d;
  int64_t m, n, k, ldd;
  bool relu;
  int tile_n;  // CTA tile width: 64, 128 or 256 (gemm_conv1x1_tile_n picks one)
};

// Output channels per CTA tile for a GEMM `n` columns wide: the widest tile that pads no more
// than a narrower one (a wider tile reads the activation fewer times and runs WGMMA at full width).
inline int gemm_conv1x1_tile_n(int64_t n) {
  if (n <= 64) return 64;
  if (n <= 128) return 128;
  const int64_t padded_to_256 = (n + 255) / 256 * 256, padded_to_128 = (n + 127) / 128 * 128;
  return padded_to_256 <= padded_to_128 ? 256 : 128;
}

enum class GemmDtype : int { kHalf, kBFloat16 };

// One kernel per (dtype, tile width), each in its own .cu file; built only with the CUTLASS
// headers (INCEPTION_FAST_WITH_CUTLASS). nullptr on success, else why the launch failed.
template <GemmDtype Dtype, int TileN>
const char* launch_gemm_conv1x1(const GemmConv1x1Args& args, cudaStream_t stream);

#define INCEPTION_FAST_DECLARE_GEMM_CONV1X1(DTYPE, TILE_N) \
  template <>                                             \
  const char* launch_gemm_conv1x1<GemmDtype::DTYPE, TILE_N>(const GemmConv1x1Args& args, cudaStream_t stream);
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 64)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 128)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 256)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 64)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 128)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 256)
#undef INCEPTION_FAST_DECLARE_GEMM_CONV1X1

}  // namespace inception_fast
