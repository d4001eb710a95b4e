// A k x k convolution over NHWC activations as one implicit GEMM on Hopper (CUTLASS 3.x sm90
// conv mainloop in a persistent ping-pong kernel: im2col TMA loads of the activation, TMA loads
// of the weight, WGMMA, a warp-specialized producer), reading a channel slice of its input buffer
// and writing a channel slice of its output buffer. Plain data only: included from .cu files
// that must not see torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_conv1x1.h"  // cta_tile_n

namespace inception_fast {

// out[n, p, q, out_c0 + k] = act(bias[k] + sum_{r,s,c} x[n, p*stride - pad_h + r, q*stride - pad_w + s,
// in_c0 + c] * w[k, r, s, c]), zero outside the input (the padding). x: [N, H, W, in_pitch];
// w: [K, R, S, C] contiguous; out: [N, P, Q, out_pitch]. C, K, the pitches and the channel
// offsets are multiples of 8 (TMA's 16 bytes); the base pointers are 16-byte aligned.
struct ConvFpropArgs {
  const void* x;
  const void* w;
  const float* bias;
  void* out;
  int n, h, w_in, c, k, r, s;
  int stride, pad_h, pad_w;
  int p, q;  // the output size: (h + 2 pad_h - r) / stride + 1, the same for q
  int64_t in_pitch, in_c0, out_pitch, out_c0;
  bool relu;
  int tile_m;    // output pixels per CTA tile: 64 or 128 (ping-pong), 256 (cooperative); 64 and
                 // 256 in fp16 / bf16 only
  int tile_n;    // output channels per CTA tile: 64, 96 or 128 (64 for 64-row tiles, 96 or 128
                 // for 256-row tiles)
  int sm_count;  // SMs the persistent CTAs may occupy: all, or a share (usable_sms)
  SplitKArgs split;  // prepare_conv_fprop_split_k's
};

// The tile width for a conv of m = N*P*Q output pixels and k output channels on `sm_count` SMs,
// in tiles of `tile_m` rows: the GEMM op's model over the widths this op is built for (64-wide
// tiles waste less of a narrow conv, and make more CTAs where 128-wide ones would leave SMs
// idle), with a fixed cost of 128 columns per tile: a conv tile's gather prologue and longer
// pipeline fill cost more than a GEMM's. The 96-wide tile is a candidate only where the output
// channels fill it exactly (96, 192, 288, ...); elsewhere its extra tiles cost more than the
// columns it saves. On an H100, on Inception-v4's convs at batch 32 and 256, it picks the fastest
// of the three 128-row widths in 31 of 32 cases, the other within 4% (where it picks 96-wide
// tiles, they take 0.82-0.94x the time of 128-wide ones). 256-row tiles are 96 or 128 wide, 64-row
// tiles 64 wide.
inline int conv_fprop_tile_n(int64_t m, int64_t k, int sm_count, int tile_m = 128) {
  if (tile_m == 64) return 64;
  if (tile_m == 256) {
    return k % 96 == 0 ? cta_tile_n(m, k, sm_count, {128, 96}, 128, 256) : 128;
  }
  if (k % 96 == 0) return cta_tile_n(m, k, sm_count, {128, 96, 64}, 128);
  return cta_tile_n(m, k, sm_count, {128, 64}, 128);
}

struct ConvTile {
  int m, n;  // output pixels and output channels per CTA tile
};

// The tile shape for a stride-`stride` conv of m = N*P*Q output pixels and k output channels on
// `sm_count` SMs; `sixteen_bit` where 64- and 256-row tiles are built for the dtype.
// 64 x 64 tiles where they fit one wave of the SMs: a small conv then runs on up to twice the
// CTAs of 128-row tiles, each loading 2/3 of a 128 x 64 tile's bytes per k-block, and the K loop's
// loads bound it. On an H200 (fp16, line-aligned slices), in the 15 cases of Inception-v4's k x k
// convs at batch 1 and 8 where they fit one wave they took 0.82-0.97x the time of the 128-row pick
// below; in the 17 where they do not, 1.01-1.57x.
// Else the 128-row width of conv_fprop_tile_n, unless a stride-1 conv's 256-row tiles cost less
// in the same model with their work taken at 0.85 of its columns: two warpgroups on one tile keep
// the tensor cores busier. On an H100 (fp16, line-aligned slices), 256-row tiles took 0.84-0.96x
// the time of the best 128-row tile on Inception-v4's stride-1 3x3 / 1x7 / 3x1 convs at batch 256
// where that holds (ReductionA's 192-to-224 3x3 0.84x, InceptionA's 96-to-96 0.93x); on the
// stride-2 convs they gained nothing (0.98-1.10x at batch 256). Over the network's k x k convs
// (the stem aside) at batches 8, 32 and 256 the model's picks take 3.540 ms against 3.664 before
// and 3.514 for the fastest shape of each.
inline ConvTile conv_fprop_tile(int64_t m, int64_t k, int stride, int sm_count, bool sixteen_bit) {
  if (sixteen_bit && narrow_tiles_fit_one_wave(m, k, sm_count)) return {64, 64};
  const int narrow = conv_fprop_tile_n(m, k, sm_count);
  if (!sixteen_bit || stride != 1) return {128, narrow};
  const int wide = conv_fprop_tile_n(m, k, sm_count, 256);
  const int64_t wide_cost = cta_tiles_cost(m, k, sm_count, 256, wide, 128);
  const int64_t narrow_cost = cta_tiles_cost(m, k, sm_count, 128, narrow, 128);
  return wide_cost * 17 < narrow_cost * 20 ? ConvTile{256, wide} : ConvTile{128, narrow};
}

// kTf32: fp32 operands on TF32 tensor cores (read truncated to TF32; out rounded to TF32, to nearest).
enum class ConvDtype : int { kHalf, kBFloat16, kTf32 };

// One kernel per (dtype, tile shape), each in its own .cu file; built only with the CUTLASS
// headers and util headers (INCEPTION_FAST_WITH_CUTLASS_CONV). Prepares the launch (launch_prepared
// issues it): nullptr on success, else why the kernel cannot run it.
template <ConvDtype Dtype, int TileM, int TileN>
const char* prepare_conv_fprop(const ConvFpropArgs& args, PreparedLaunch& out);

// The tile shapes built, (TILE_M, TILE_N) after the caller's arguments: 128-row tiles in every
// dtype; 64 x 64 tiles (twice the CTAs of 128 x 64 on a small conv, each loading 2/3 of the bytes
// per k-block) and 256-row tiles in fp16 and bf16 (cuda_conv_fprop's dispatch in bindings.cpp
// follows these). One list for the declarations below and the definitions of each dtype's .cu file.
#define INCEPTION_FAST_CONV_TILES_128_ROWS(X, ...) \
  X(__VA_ARGS__, 128, 64) X(__VA_ARGS__, 128, 96) X(__VA_ARGS__, 128, 128)
#define INCEPTION_FAST_CONV_TILES_64_ROWS(X, ...) X(__VA_ARGS__, 64, 64)
#define INCEPTION_FAST_CONV_TILES_256_ROWS(X, ...) X(__VA_ARGS__, 256, 96) X(__VA_ARGS__, 256, 128)
#define INCEPTION_FAST_CONV_TILES_16BIT(X, ...)                                              \
  INCEPTION_FAST_CONV_TILES_128_ROWS(X, __VA_ARGS__) INCEPTION_FAST_CONV_TILES_64_ROWS(X, __VA_ARGS__) \
  INCEPTION_FAST_CONV_TILES_256_ROWS(X, __VA_ARGS__)

#define INCEPTION_FAST_DECLARE_CONV_FPROP(DTYPE, TILE_M, TILE_N) \
  template <>                                                   \
  const char* prepare_conv_fprop<ConvDtype::DTYPE, TILE_M, TILE_N>(const ConvFpropArgs& args, PreparedLaunch& out);
INCEPTION_FAST_CONV_TILES_16BIT(INCEPTION_FAST_DECLARE_CONV_FPROP, kHalf)
INCEPTION_FAST_CONV_TILES_16BIT(INCEPTION_FAST_DECLARE_CONV_FPROP, kBFloat16)
INCEPTION_FAST_CONV_TILES_128_ROWS(INCEPTION_FAST_DECLARE_CONV_FPROP, kTf32)

// Split-K in kSplitKTileM x kSplitKTileN tiles, args.split.splits > 1 ranges (fp16 and bf16).
template <ConvDtype Dtype>
const char* prepare_conv_fprop_split_k(const ConvFpropArgs& args, PreparedLaunch& out);
template <>
const char* prepare_conv_fprop_split_k<ConvDtype::kHalf>(const ConvFpropArgs& args, PreparedLaunch& out);
template <>
const char* prepare_conv_fprop_split_k<ConvDtype::kBFloat16>(const ConvFpropArgs& args, PreparedLaunch& out);

}  // namespace inception_fast
