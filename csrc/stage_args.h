// The arguments of one grouped stage launch, shared by the host bindings and the kernels.
// Plain data only: this header is included from .cu files that must not see torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace inception_fast {

// Values of the packed problem table (inception_fast/packing.py).
// kAvgPool divides by the in-image taps (count_include_pad=False), kAvgPoolIncludePad by KH*KW.
enum ProblemKind : int { kConv = 0, kAvgPool = 1, kMaxPool = 2, kAvgPoolIncludePad = 3 };
enum BufferId : int { kInput = 0, kWork = 1, kOutput = 2 };
// kFlagResidual: the epilogue adds the block input at the output pixel, channel col_dst.
enum ColumnFlag : int { kFlagRelu = 1, kFlagToOutput = 2, kFlagResidual = 4 };
constexpr int kProblemFields = 13;
constexpr int kMaxProblems = 8;

struct ProblemDesc {
  int kind, src_buf, src_c0, cin, cols, kh, kw, stride, pad_h, pad_w;
  int col_off;
  int ceil;             // ceil_mode output size (pools); windows past the input read nothing
  int oh, ow;           // output size of this problem (= size of its destination buffers)
  int keeps_size;       // oh x ow is the input's size: residual columns may read the input
  int k;                // GEMM depth kh * kw * cin (conv only)
  int n_tiles;          // column tiles (conv only)
  int64_t w_off;        // element offset of the OHWI weight (conv only)
  int64_t m;            // output pixels: batch * oh * ow
  int64_t tile_begin;   // first CTA of this problem in the launch
};

struct StageArgs {
  void* buf[3];  // NHWC input, work, output (work may be null when unused)
  int buf_c[3];  // pixel stride (channels) of each buffer
  int buf_h[3];
  int buf_w[3];
  const void* weights;
  const float* bias;
  const int32_t* col_dst;
  const int32_t* col_flags;
  int num_problems;
  ProblemDesc problem[kMaxProblems];  // in launch order; tile_begin ascending
  int64_t num_tiles;
};

// CTA tiles of the kernel, needed by the host to size the grid.
constexpr int kConvTileM = 128;
constexpr int kConvTileN = 128;
constexpr int kPoolTileItems = 256;  // (pixel, 8-channel group) items per pool CTA

cudaError_t launch_conv_stage_fp16(const StageArgs& args, cudaStream_t stream);
cudaError_t launch_conv_stage_bf16(const StageArgs& args, cudaStream_t stream);

}  // namespace inception_fast
