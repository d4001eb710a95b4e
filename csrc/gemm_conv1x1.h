// A 1x1 convolution over an NHWC activation as one GEMM on Hopper (CUTLASS 3.x sm90 kernels:
// TMA loads, WGMMA, a warp-specialized producer), shared by the host bindings and the kernels.
// Plain data only: this header is included from .cu files that must not see torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "prepared_launch.h"

namespace inception_fast {

// D[m, n] = act(sum_k A[m, k] * B[n, k] + bias[n]) with A = the activation [M, K] (K contiguous),
// B = the weight [N, K] (K contiguous) and D = rows of the output, ldd elements apart, starting
// at its channel slice (so the branch lands straight in the concatenation).
// Split-K (split_k_scheduler.cuh): the K loop of each output tile cut into `splits` ranges run by
// as many CTAs, on cooperative kSplitKTileM x kSplitKTileN tiles. The workspace's lock array
// starts at `locks` (zero between kernels), `partial_bytes` below it hold the fp32 partials and
// `lock_bytes` from it the locks (split_k_workspace.h).
struct SplitKArgs {
  int splits = 1;
  void* locks = nullptr;
  int64_t partial_bytes = 0, lock_bytes = 0;
};
// How many to cut is the caller's choice (gemm_routing.split_k_count): it must not depend on
// how many SMs a launch gets, so that a share of the GPU computes the same bits.
constexpr int kSplitKTileM = 128, kSplitKTileN = 64;
constexpr int kMaxSplits = 8;

struct GemmConv1x1Args {
  const void* a;
  const void* b;
  const float* bias;
  void* d;
  int64_t m, n, k, ldd;
  bool relu;
  int tile_m;    // CTA tile rows: 64 (64 x 64 tiles; fp16 / bf16) or 128 (gemm_conv1x1_tile_m)
  int tile_n;    // CTA tile width: 64, 128 or 256 (gemm_conv1x1_tile_n picks one)
  int sm_count;  // SMs the persistent CTAs may occupy: all, or a share (usable_sms)
  SplitKArgs split;  // prepare_gemm_conv1x1_split_k's
};

// The SMs a persistent launch may occupy: the device's `sm_count`, or `limit` of them where
// 0 < limit (launches side by side each take a share of the GPU), in whole clusters of
// `cluster` CTAs.
inline int usable_sms(int sm_count, int64_t limit, int cluster) {
  const int64_t sms = limit > 0 && limit < sm_count ? limit : sm_count;
  return static_cast<int>(sms >= cluster ? sms / cluster * cluster : cluster);
}

// The model's time of an m x n GEMM in tile_m x tile_n CTA tiles on `sm_count` SMs: rounds of
// CTAs over the SMs times the work of one tile, its width plus a fixed cost of `fixed_columns`
// (prologue, epilogue; about 64 for a GEMM), per 128 rows.
inline int64_t cta_tiles_cost(int64_t m, int64_t n, int sm_count, int64_t tile_m, int64_t tile_n,
                              int64_t fixed_columns) {
  const int64_t sms = sm_count > 0 ? sm_count : 1;
  const int64_t tiles = (m + tile_m - 1) / tile_m * ((n + tile_n - 1) / tile_n);
  return (tiles + sms - 1) / sms * (tile_m / 128) * (tile_n + fixed_columns);
}

// Output channels per CTA tile, of `widths` (widest first; tiles are `tile_m` rows), for an
// m x n GEMM on `sm_count` SMs, by cta_tiles_cost. Ties go to the wider tile, which reads the
// activation fewer times. Small GEMMs get narrow tiles to fill the SMs.
inline int cta_tile_n(int64_t m, int64_t n, int sm_count, std::initializer_list<int> widths,
                      int64_t fixed_columns = 64, int64_t tile_m = 128) {
  int best = *widths.begin();
  int64_t best_cost = -1;
  for (const int tile : widths) {
    const int64_t cost = cta_tiles_cost(m, n, sm_count, tile_m, tile, fixed_columns);
    if (best_cost < 0 || cost < best_cost) {
      best = tile;
      best_cost = cost;
    }
  }
  return best;
}

// The GEMM op's tile width: 64, 128 or 256.
inline int gemm_conv1x1_tile_n(int64_t m, int64_t n, int sm_count) {
  return cta_tile_n(m, n, sm_count, {256, 128, 64});
}

// Whether an m x n output's 64 x 64 CTA tiles fit one wave of `sm_count` SMs: where they do, both
// CUTLASS ops run 64 x 64 tiles (built for fp16 and bf16). A small GEMM's or conv's K loop is
// bound by its tiles' loads, and a 64 x 64 tile loads 2/3 of a 128 x 64 tile's bytes per k-block,
// on up to twice the CTAs (conv_fprop_tile has the measurements).
inline bool narrow_tiles_fit_one_wave(int64_t m, int64_t n, int sm_count) {
  return (m + 63) / 64 * ((n + 63) / 64) <= sm_count;
}

// The GEMM op's tile rows: 64 where narrow_tiles_fit_one_wave (fp16 and bf16: `sixteen_bit`), else 128.
inline int gemm_conv1x1_tile_m(int64_t m, int64_t n, int sm_count, bool sixteen_bit) {
  return sixteen_bit && narrow_tiles_fit_one_wave(m, n, sm_count) ? 64 : 128;
}

// kTf32: fp32 operands on TF32 tensor cores (read truncated to TF32; D rounded to TF32, to nearest).
enum class GemmDtype : int { kHalf, kBFloat16, kTf32 };

// One kernel per (dtype, tile width), each in its own .cu file; built only with the CUTLASS
// headers (INCEPTION_FAST_WITH_CUTLASS). Prepares the launch (launch_prepared issues it):
// nullptr on success, else why the kernel cannot run it.
template <GemmDtype Dtype, int TileN>
const char* prepare_gemm_conv1x1(const GemmConv1x1Args& args, PreparedLaunch& out);

#define INCEPTION_FAST_DECLARE_GEMM_CONV1X1(DTYPE, TILE_N) \
  template <>                                             \
  const char* prepare_gemm_conv1x1<GemmDtype::DTYPE, TILE_N>(const GemmConv1x1Args& args, PreparedLaunch& out);
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 64)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 128)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kHalf, 256)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 64)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 128)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kBFloat16, 256)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kTf32, 64)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kTf32, 128)
INCEPTION_FAST_DECLARE_GEMM_CONV1X1(kTf32, 256)
#undef INCEPTION_FAST_DECLARE_GEMM_CONV1X1

// 64 x 64 tiles (fp16 and bf16).
template <GemmDtype Dtype>
const char* prepare_gemm_conv1x1_narrow(const GemmConv1x1Args& args, PreparedLaunch& out);
template <>
const char* prepare_gemm_conv1x1_narrow<GemmDtype::kHalf>(const GemmConv1x1Args& args, PreparedLaunch& out);
template <>
const char* prepare_gemm_conv1x1_narrow<GemmDtype::kBFloat16>(const GemmConv1x1Args& args, PreparedLaunch& out);

// Split-K in kSplitKTileM x kSplitKTileN tiles, args.split.splits > 1 ranges (fp16 and bf16).
template <GemmDtype Dtype>
const char* prepare_gemm_conv1x1_split_k(const GemmConv1x1Args& args, PreparedLaunch& out);
template <>
const char* prepare_gemm_conv1x1_split_k<GemmDtype::kHalf>(const GemmConv1x1Args& args, PreparedLaunch& out);
template <>
const char* prepare_gemm_conv1x1_split_k<GemmDtype::kBFloat16>(const GemmConv1x1Args& args, PreparedLaunch& out);

}  // namespace inception_fast
