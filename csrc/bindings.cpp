// Torch ops `inception_fast::cuda_conv_stage`: checks its arguments, turns the packed problem
// table (inception_fast/packing.py) into a launch schedule and calls the stage kernel; and
// `inception_fast::cuda_gemm_conv1x1`: one 1x1 convolution as a CUTLASS sm90 GEMM into a
// channel slice of a wider NHWC output; `cuda_conv_fprop`, a k x k convolution as CUTLASS's sm90
// implicit GEMM; and `cuda_op_launches`, a stage's launches of those two ops in one call.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "check_text.h"
#include "cutlass_ops.h"
#include "conv_fprop.h"
#include "gemm_conv1x1.h"
#include "split_k_workspace.h"
#include "programmatic_launch.h"
#include "stage_args.h"

namespace inception_fast {
namespace {

// Field order of a packed problem row.
enum Field : int {
  kKind, kSrcBuf, kSrcC0, kCin, kCols, kKh, kKw, kStride, kPadH, kPadW, kWOff, kColOff, kCeil
};

constexpr const char* kBufferNames[3] = {"input", "work", "output"};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_buffer(const at::Tensor& t, const char* name, const at::Tensor& input, bool may_be_empty) {
  OP_CHECK(t.is_cuda(), "cuda_conv_stage: ", name, " must be a CUDA tensor, got ", t.device());
  OP_CHECK(t.device() == input.device(), "cuda_conv_stage: ", name, " is on ", t.device(),
              ", input on ", input.device());
  OP_CHECK(t.scalar_type() == input.scalar_type(), "cuda_conv_stage: ", name, " has dtype ",
              t.scalar_type(), ", input has ", input.scalar_type());
  if (may_be_empty && t.numel() == 0) return;
  OP_CHECK(t.dim() == 4, "cuda_conv_stage: ", name, " must be NHWC [N, H, W, C], got shape ",
              t.sizes());
  OP_CHECK(t.is_contiguous(), "cuda_conv_stage: ", name,
              " must be a contiguous NHWC tensor (a channels_last NCHW tensor permuted to NHWC)");
  OP_CHECK(t.size(3) % 8 == 0, "cuda_conv_stage: ", name, " has ", t.size(3),
              " channels; the kernel needs a multiple of 8");
  OP_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "cuda_conv_stage: ", name,
              " must be 16-byte aligned");
}

void check_column_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Tensor& input) {
  OP_CHECK(t.device() == input.device(), "cuda_conv_stage: ", name, " is on ", t.device(),
              ", input on ", input.device());
  OP_CHECK(t.scalar_type() == dtype, "cuda_conv_stage: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  OP_CHECK(t.dim() == 1 && t.is_contiguous(), "cuda_conv_stage: ", name,
              " must be a contiguous 1-D tensor, got shape ", t.sizes());
}

// Output positions of a window along one dimension: PyTorch's pooling rule, the same as
// inception_fast/windows.py. With ceil, the last window may run past the input but must start
// inside it or its left padding. Needs size + 2 * pad >= kernel (the numerator is then >= 0).
int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, bool ceil) {
  int64_t out = (size + 2 * pad - kernel + (ceil ? stride - 1 : 0)) / stride + 1;
  if (ceil && (out - 1) * stride >= size + pad) --out;
  return out;
}

// Conv problems first, deepest GEMM first, so the longest CTAs start early and the short pool
// CTAs fill the tail of the launch.
std::vector<int> launch_order(const std::vector<ProblemDesc>& problems) {
  std::vector<int> order(problems.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const bool conv_a = problems[a].kind == kConv, conv_b = problems[b].kind == kConv;
    if (conv_a != conv_b) return conv_a;
    return conv_a && problems[a].k > problems[b].k;
  });
  return order;
}

void cuda_conv_stage(const at::Tensor& input, const at::Tensor& work, const at::Tensor& output,
                     c10::IntArrayRef problems, const at::Tensor& weights, const at::Tensor& bias,
                     const at::Tensor& col_dst, const at::Tensor& col_flags) {
  OP_CHECK(input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16,
              "cuda_conv_stage: input must be float16 or bfloat16, got ", input.scalar_type());
  check_buffer(input, "input", input, false);
  check_buffer(work, "work", input, true);
  check_buffer(output, "output", input, false);
  OP_CHECK(output.size(0) == input.size(0), "cuda_conv_stage: output batch ", output.size(0),
              " differs from input batch ", input.size(0));
  const bool has_work = work.numel() > 0;
  if (has_work) {
    OP_CHECK(work.size(0) == input.size(0) && work.size(1) == input.size(1) && work.size(2) == input.size(2),
                "cuda_conv_stage: work must be [N, H, W, C] at the input's batch and size, got ",
                work.sizes(), " for input ", input.sizes());
  }
  OP_CHECK(weights.numel() == 0 || weights.scalar_type() == input.scalar_type(),
              "cuda_conv_stage: weights have dtype ", weights.scalar_type(), ", input has ", input.scalar_type());
  OP_CHECK(weights.numel() == 0 || (weights.is_contiguous() && weights.device() == input.device()),
              "cuda_conv_stage: weights must be contiguous and on ", input.device());
  OP_CHECK(weights.numel() == 0 || reinterpret_cast<uintptr_t>(weights.data_ptr()) % 16 == 0,
              "cuda_conv_stage: weights must be 16-byte aligned");
  check_column_tensor(bias, "bias", at::kFloat, input);
  check_column_tensor(col_dst, "col_dst", at::kInt, input);
  check_column_tensor(col_flags, "col_flags", at::kInt, input);
  OP_CHECK(col_dst.numel() == bias.numel() && col_flags.numel() == bias.numel(),
              "cuda_conv_stage: bias, col_dst and col_flags must have one entry per column, got ",
              bias.numel(), ", ", col_dst.numel(), ", ", col_flags.numel());

  const int64_t num_problems = static_cast<int64_t>(problems.size()) / kProblemFields;
  OP_CHECK(static_cast<int64_t>(problems.size()) == num_problems * kProblemFields && num_problems >= 1 &&
                  num_problems <= kMaxProblems,
              "cuda_conv_stage: problems must hold 1 to ", kMaxProblems, " rows of ", kProblemFields,
              " fields, got ", problems.size(), " values");

  StageArgs args{};
  const std::array<const at::Tensor*, 3> buffers = {&input, &work, &output};
  for (int b = 0; b < 3; ++b) {
    const at::Tensor& t = *buffers[b];
    const bool present = b != kWork || has_work;
    args.buf[b] = present ? t.data_ptr() : nullptr;
    args.buf_c[b] = present ? static_cast<int>(t.size(3)) : 0;
    args.buf_h[b] = present ? static_cast<int>(t.size(1)) : 0;
    args.buf_w[b] = present ? static_cast<int>(t.size(2)) : 0;
  }
  const int64_t batch = input.size(0);

  std::vector<ProblemDesc> descs;
  for (int64_t p = 0; p < num_problems; ++p) {
    const int64_t* row = problems.data() + p * kProblemFields;
    ProblemDesc d{};
    d.kind = static_cast<int>(row[kKind]);
    d.src_buf = static_cast<int>(row[kSrcBuf]);
    OP_CHECK(d.kind == kConv || d.kind == kAvgPool || d.kind == kMaxPool || d.kind == kAvgPoolIncludePad,
                "cuda_conv_stage: problem ", p, " has unknown kind ", row[kKind]);
    OP_CHECK(d.src_buf >= 0 && d.src_buf < 3 && args.buf[d.src_buf] != nullptr,
                "cuda_conv_stage: problem ", p, " reads buffer ", row[kSrcBuf], " which was not given");
    const char* src_name = kBufferNames[d.src_buf];
    for (int f : {kSrcC0, kCin, kCols, kKh, kKw, kStride, kPadH, kPadW, kColOff, kCeil}) {
      OP_CHECK(row[f] >= 0 && row[f] < (int64_t{1} << 30), "cuda_conv_stage: problem ", p,
                  " field ", f, " is out of range: ", row[f]);
    }
    d.src_c0 = static_cast<int>(row[kSrcC0]);
    d.cin = static_cast<int>(row[kCin]);
    d.cols = static_cast<int>(row[kCols]);
    d.kh = static_cast<int>(row[kKh]);
    d.kw = static_cast<int>(row[kKw]);
    d.stride = static_cast<int>(row[kStride]);
    d.pad_h = static_cast<int>(row[kPadH]);
    d.pad_w = static_cast<int>(row[kPadW]);
    d.col_off = static_cast<int>(row[kColOff]);
    d.ceil = static_cast<int>(row[kCeil]);
    OP_CHECK(d.ceil == 0 || d.ceil == 1, "cuda_conv_stage: problem ", p, " has CEIL ", d.ceil,
                "; it must be 0 (floor) or 1 (ceil_mode)");
    OP_CHECK(!d.ceil || d.kind == kMaxPool || d.kind == kAvgPool, "cuda_conv_stage: problem ", p,
                " has kind ", d.kind, " with CEIL 1; ceil_mode is for max and count_include_pad=False average pools");
    OP_CHECK(d.kind == kConv || (2 * d.pad_h <= d.kh && 2 * d.pad_w <= d.kw), "cuda_conv_stage: pool problem ", p,
                " pads (", d.pad_h, ", ", d.pad_w, ") beyond half its ", d.kh, "x", d.kw,
                " window (PyTorch's rule: every window must see an input pixel)");
    OP_CHECK(d.cin > 0 && d.cols > 0 && d.kh > 0 && d.kw > 0 && d.stride > 0,
                "cuda_conv_stage: problem ", p, " has an empty window, channel count or stride");
    OP_CHECK(d.src_c0 % 8 == 0 && d.cin % 8 == 0, "cuda_conv_stage: problem ", p, " reads channels [",
                d.src_c0, ", ", d.src_c0 + d.cin, ") of ", src_name,
                "; the kernel needs offsets and counts that are multiples of 8 (pad the input)");
    OP_CHECK(d.src_c0 + d.cin <= args.buf_c[d.src_buf], "cuda_conv_stage: problem ", p,
                " reads channels up to ", d.src_c0 + d.cin, " of ", src_name, ", which has ",
                args.buf_c[d.src_buf]);
    OP_CHECK(d.col_off + static_cast<int64_t>(d.cols) <= bias.numel(), "cuda_conv_stage: problem ", p,
                " has columns up to ", d.col_off + d.cols, " but only ", bias.numel(), " are described");
    const int64_t in_h = args.buf_h[d.src_buf], in_w = args.buf_w[d.src_buf];
    OP_CHECK(in_h + 2 * d.pad_h >= d.kh && in_w + 2 * d.pad_w >= d.kw,
                "cuda_conv_stage: problem ", p, "'s ", d.kh, "x", d.kw, " window does not fit its ", in_h, "x",
                in_w, " input");
    const int64_t oh = out_size(in_h, d.kh, d.stride, d.pad_h, d.ceil);
    const int64_t ow = out_size(in_w, d.kw, d.stride, d.pad_w, d.ceil);
    d.oh = static_cast<int>(oh);
    d.ow = static_cast<int>(ow);
    // Residual columns read the input at their own output pixel. Which columns have the flag
    // lives on the device, so the Python packer checks the rule (packing.check_stage); the kernel
    // stores NaN for residual columns of a problem that does not keep the input's size.
    d.keeps_size = oh == args.buf_h[kInput] && ow == args.buf_w[kInput];
    d.m = batch * oh * ow;
    // Every destination of a problem has the problem's output size (packing.py). Which buffer and
    // channel each column writes lives in col_flags / col_dst on the device, so the Python packer
    // checks those once (cuda_backend._check_destinations / _check_sizes); here, at least one
    // buffer must hold the problem's pixels.
    OP_CHECK(oh * ow <= static_cast<int64_t>(args.buf_h[kOutput]) * args.buf_w[kOutput] ||
                    (has_work && oh * ow <= in_h * in_w),
                "cuda_conv_stage: problem ", p, " produces ", oh, "x", ow, " pixels, more than any destination holds");
    if (d.kind == kConv) {
      d.k = d.kh * d.kw * d.cin;
      d.w_off = row[kWOff];
      OP_CHECK(d.w_off >= 0 && d.w_off % 8 == 0 && d.w_off + static_cast<int64_t>(d.cols) * d.k <= weights.numel(),
                  "cuda_conv_stage: problem ", p, "'s weight [", d.w_off, ", ",
                  d.w_off + static_cast<int64_t>(d.cols) * d.k, ") does not lie 16-byte aligned inside the ",
                  weights.numel(), " weights");
      d.n_tiles = static_cast<int>(ceil_div(d.cols, kConvTileN));
    } else {
      OP_CHECK(d.cin == d.cols && d.cols % 8 == 0, "cuda_conv_stage: pool problem ", p,
                  " must map its ", d.cin, " channels one to one onto a multiple of 8 columns, got ", d.cols);
      d.k = 0;
      d.w_off = 0;
      d.n_tiles = 1;
    }
    descs.push_back(d);
  }

  int64_t tiles = 0;
  const std::vector<int> order = launch_order(descs);
  for (size_t i = 0; i < order.size(); ++i) {
    ProblemDesc d = descs[order[i]];
    d.tile_begin = tiles;
    tiles += d.kind == kConv ? ceil_div(d.m, kConvTileM) * d.n_tiles : ceil_div(d.m * (d.cols / 8), kPoolTileItems);
    args.problem[i] = d;
  }
  args.num_problems = static_cast<int>(num_problems);
  args.num_tiles = tiles;
  OP_CHECK(tiles <= 0x7fffffff, "cuda_conv_stage: ", tiles, " CTAs exceed the grid limit; split the batch");
  args.weights = weights.numel() > 0 ? weights.data_ptr() : nullptr;
  args.bias = bias.data_ptr<float>();
  args.col_dst = col_dst.data_ptr<int32_t>();
  args.col_flags = col_flags.data_ptr<int32_t>();

  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = input.scalar_type() == at::kHalf ? launch_conv_stage_fp16(args, stream)
                                                           : launch_conv_stage_bf16(args, stream);
  OP_CHECK(err == cudaSuccess, "cuda_conv_stage: kernel launch failed: ", cudaGetErrorString(err));
}

// The CUTLASS ops' dtypes: fp16, bf16, and fp32 only on TF32 tensor cores, which the caller asks
// for (tf32=True) so that no fp32 caller gets TF32 by surprise.
void check_cutlass_dtype(const char* op, const at::Tensor& x, bool tf32) {
  const at::ScalarType dtype = x.scalar_type();
  OP_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat, op,
           ": x must be float16, bfloat16 or float32 (on TF32 tensor cores), got ", dtype);
  OP_CHECK(dtype != at::kFloat || tf32, op, ": float32 runs on TF32 tensor cores only (inputs read truncated to "
           "TF32, outputs rounded to TF32); pass tf32=True to ask for that, or use torch's convolution for exact fp32");
  OP_CHECK(dtype == at::kFloat || !tf32, op, ": tf32=True is for float32 inputs, got ", dtype);
}

// Calls `launch` with the op's dtype as a type (std::integral_constant<Dtype, ...>): fp16, bf16,
// or fp32 on TF32 (check_cutlass_dtype has ruled out the rest).
template <typename Dtype, typename Launch>
const char* by_dtype(at::ScalarType dtype, Launch&& launch) {
  switch (dtype) {
    case at::kHalf:
      return launch(std::integral_constant<Dtype, Dtype::kHalf>{});
    case at::kBFloat16:
      return launch(std::integral_constant<Dtype, Dtype::kBFloat16>{});
    default:
      return launch(std::integral_constant<Dtype, Dtype::kTf32>{});
  }
}

// Calls launch(std::integral_constant<int, W>{}) for the width W of `Widths` equal to `tile`:
// one kernel instantiation per tile width.
template <int... Widths, class Launch>
const char* by_tile(int tile, Launch&& launch) {
  const char* error = "no kernel is built for this tile width";
  (void)((tile == Widths && (error = launch(std::integral_constant<int, Widths>{}), true)) || ...);
  return error;
}

// The ops' split_k: 0 or 1 (none) or 2 to kMaxSplits ranges of the K loop, for fp16 and bf16 in
// the split-K tile: the caller's tile_m and tile_n must be 0 (the op's choice) or that tile's.
// The message is built only when a check fails (join_text, not c10::str: see check_text.h).
void check_split_k(const char* op, const at::Tensor& x, int64_t split_k, int64_t tile_m, int64_t tile_n) {
  OP_CHECK(split_k >= 0 && split_k <= kMaxSplits, op, ": split_k must be 0 or 1 (no split) or 2 to ", kMaxSplits,
           " ranges of the K loop, got ", split_k);
  const bool split_tile = (tile_m == 0 || tile_m == kSplitKTileM) && (tile_n == 0 || tile_n == kSplitKTileN);
  OP_CHECK(split_k < 2 || (x.scalar_type() != at::kFloat && split_tile), op,
           ": split-K is built for fp16 and bf16 in ", kSplitKTileM, " x ", kSplitKTileN, " tiles; got ",
           x.scalar_type(), " with tile_m ", tile_m, ", tile_n ", tile_n,
           ". Pass split_k=0 or 1, or tiles of 0 (the op's) or those");
}

// Both ops' 64-row tiles: 64 x 64, fp16 and bf16 only.
void check_narrow_tile(const char* op, const at::Tensor& x, int64_t tile_m, int64_t tile_n) {
  OP_CHECK(tile_m != 64 || ((tile_n == 0 || tile_n == 64) && x.scalar_type() != at::kFloat), op,
           ": 64-row tiles are built 64 wide for fp16 and bf16; got tile_n ", tile_n, " (", x.scalar_type(),
           "). Pass tile_m=0 or 128, or tile_n=64");
}

// The split-K of a CUTLASS launch on x's device and the current stream: the ops' split_k (0 or
// 1: none; 2 and up: that many ranges of the K loop) with the stream's workspace.
SplitKArgs split_k_args(const at::Tensor& x, int64_t split_k) {
  SplitKArgs split;
  if (split_k < 2) return split;
  const SplitKWorkspace workspace = split_k_workspace(x.device().index(), c10::cuda::getCurrentCUDAStream());
  split.splits = static_cast<int>(split_k);
  split.locks = workspace.locks;
  split.partial_bytes = workspace.partial_bytes;
  split.lock_bytes = workspace.lock_bytes;
  return split;
}

// Issues a prepared launch on the current stream (programmatic dependent launch where it is on).
void launch_prepared_or_raise(const char* op, const PreparedLaunch& prepared) {
  const char* error = launch_prepared(prepared, c10::cuda::getCurrentCUDAStream(), programmatic_launch_enabled());
  OP_CHECK(error == nullptr, op, ": ", error);
}

// Arguments of cuda_gemm_conv1x1 on any device (the Meta kernel runs these too, so a bad call
// fails while tracing). Pointer alignment is checked where there are pointers (CUDA).
void check_gemm_conv1x1(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& out, int64_t col_offset, int64_t tile_n, bool tf32, int64_t sm_limit,
                        int64_t tile_m, int64_t split_k) {
  check_cutlass_dtype("cuda_gemm_conv1x1", x, tf32);
  OP_CHECK(tile_m == 0 || tile_m == 64 || tile_m == 128, "cuda_gemm_conv1x1: tile_m must be 0 (chosen per "
           "problem), 64 or 128, got ", tile_m);
  check_narrow_tile("cuda_gemm_conv1x1", x, tile_m, tile_n);
  check_split_k("cuda_gemm_conv1x1", x, split_k, tile_m, tile_n);
  OP_CHECK(sm_limit >= 0, "cuda_gemm_conv1x1: sm_limit must be 0 (every SM) or a positive SM count, got ", sm_limit);
  OP_CHECK(x.dim() >= 2 && x.is_contiguous(), "cuda_gemm_conv1x1: x must be a contiguous NHWC (or [M, K]) "
           "tensor, channels last, got shape ", x.sizes());
  const int64_t k = x.size(-1), m = x.numel() / std::max<int64_t>(k, 1);
  OP_CHECK(k > 0 && k % 8 == 0, "cuda_gemm_conv1x1: x has ", k, " channels; the kernel needs a positive multiple of 8");
  OP_CHECK(m < (int64_t{1} << 31), "cuda_gemm_conv1x1: x has ", m, " pixels, more than the kernel's 2^31 - 1 rows");
  OP_CHECK(weight.device() == x.device() && weight.scalar_type() == x.scalar_type(), "cuda_gemm_conv1x1: weight is ",
           weight.scalar_type(), " on ", weight.device(), ", x is ", x.scalar_type(), " on ", x.device());
  OP_CHECK(weight.dim() == 2 && weight.size(1) == k && weight.is_contiguous(),
           "cuda_gemm_conv1x1: weight must be a contiguous [Cout, Cin] = [N, ", k,
           "] tensor (a 1x1 conv weight flattened), got shape ", weight.sizes());
  const int64_t n = weight.size(0);
  OP_CHECK(n > 0 && n % 8 == 0, "cuda_gemm_conv1x1: weight has ", n,
           " output channels; the kernel needs a positive multiple of 8");
  OP_CHECK(bias.device() == x.device() && bias.scalar_type() == at::kFloat, "cuda_gemm_conv1x1: bias must be float32 on ",
           x.device(), ", got ", bias.scalar_type(), " on ", bias.device());
  OP_CHECK(bias.dim() == 1 && bias.size(0) == n && bias.is_contiguous(),
           "cuda_gemm_conv1x1: bias must be a contiguous 1-D tensor of ", n, " entries, got shape ", bias.sizes());
  OP_CHECK(out.device() == x.device() && out.scalar_type() == x.scalar_type(), "cuda_gemm_conv1x1: out is ",
           out.scalar_type(), " on ", out.device(), ", x is ", x.scalar_type(), " on ", x.device());
  OP_CHECK(out.dim() == x.dim() && out.is_contiguous() && out.sizes().slice(0, out.dim() - 1).equals(
               x.sizes().slice(0, x.dim() - 1)),
           "cuda_gemm_conv1x1: out must be contiguous with x's pixels and its own channel count, got shape ",
           out.sizes(), " for x of shape ", x.sizes());
  const int64_t channels = out.size(-1);
  OP_CHECK(channels % 8 == 0, "cuda_gemm_conv1x1: out has ", channels,
           " channels; its rows must be 16-byte aligned for TMA (a multiple of 8 channels)");
  OP_CHECK(col_offset >= 0 && col_offset % 8 == 0 && col_offset + n <= channels, "cuda_gemm_conv1x1: col_offset ",
           col_offset, " must be a multiple of 8 (16-byte aligned for TMA) with col_offset + ", n,
           " output channels within out's ", channels);
  OP_CHECK(tile_n == 0 || tile_n == 64 || tile_n == 128 || tile_n == 256, "cuda_gemm_conv1x1: tile_n must be 0 "
           "(chosen per problem), 64, 128 or 256, got ", tile_n);
  if (x.is_cuda()) {
    for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&x, "x"}, {&weight, "weight"},
                                  {&bias, "bias"}, {&out, "out"}}) {
      OP_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, "cuda_gemm_conv1x1: ", name,
               " must be 16-byte aligned (TMA)");
    }
  }
}

void cuda_gemm_conv1x1_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& out, int64_t col_offset, bool /*relu*/, int64_t tile_n, bool tf32,
                            int64_t sm_limit, int64_t split_k, int64_t tile_m) {
  check_gemm_conv1x1(x, weight, bias, out, col_offset, tile_n, tf32, sm_limit, tile_m, split_k);
}

}  // namespace

bool prepare_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                  int64_t col_offset, [[maybe_unused]] bool relu, int64_t tile_n, bool tf32,
                  [[maybe_unused]] int64_t sm_limit, [[maybe_unused]] int64_t tile_m,
                  [[maybe_unused]] int64_t split_k, [[maybe_unused]] PreparedLaunch& prepared) {
  check_gemm_conv1x1(x, weight, bias, out, col_offset, tile_n, tf32, sm_limit, tile_m, split_k);
#if defined(INCEPTION_FAST_WITH_CUTLASS)
  const int64_t k = x.size(-1), n = weight.size(0), m = x.numel() / k;
  if (m == 0) return false;
  GemmConv1x1Args args{};
  args.a = x.data_ptr();
  args.b = weight.data_ptr();
  args.bias = bias.data_ptr<float>();
  args.d = static_cast<char*>(out.data_ptr()) + col_offset * out.element_size();
  args.m = m;
  args.n = n;
  args.k = k;
  args.ldd = out.size(-1);
  args.relu = relu;
  const c10::cuda::CUDAGuard guard(x.device());
  int sm_count = 0;
  OP_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, x.device().index()) == cudaSuccess,
           "cuda_gemm_conv1x1: cannot query the SM count of ", x.device());
  args.sm_count = usable_sms(sm_count, sm_limit, 1);
  // A width given alone keeps 128-row tiles; 64-row tiles are 64 wide.
  args.tile_m = tile_m != 0   ? static_cast<int>(tile_m)
                : tile_n != 0 ? 128
                              : gemm_conv1x1_tile_m(m, n, args.sm_count, x.scalar_type() != at::kFloat);
  args.tile_n = tile_n != 0 ? static_cast<int>(tile_n)
                : args.tile_m == 64 ? 64
                                    : gemm_conv1x1_tile_n(m, n, args.sm_count);
  args.split = split_k_args(x, split_k);
  const char* error = nullptr;
  if (args.split.splits > 1) {
    error = x.scalar_type() == at::kHalf ? prepare_gemm_conv1x1_split_k<GemmDtype::kHalf>(args, prepared)
                                         : prepare_gemm_conv1x1_split_k<GemmDtype::kBFloat16>(args, prepared);
  } else if (args.tile_m == 64) {  // fp16 or bf16 (check_narrow_tile)
    error = x.scalar_type() == at::kHalf ? prepare_gemm_conv1x1_narrow<GemmDtype::kHalf>(args, prepared)
                                         : prepare_gemm_conv1x1_narrow<GemmDtype::kBFloat16>(args, prepared);
  } else {
    error = by_tile<64, 128, 256>(args.tile_n, [&](auto tile) {
      return by_dtype<GemmDtype>(x.scalar_type(), [&](auto dtype) {
        return prepare_gemm_conv1x1<decltype(dtype)::value, decltype(tile)::value>(args, prepared);
      });
    });
  }
  OP_CHECK(error == nullptr, "cuda_gemm_conv1x1: ", error);
  return true;
#else
  OP_CHECK(false, "cuda_gemm_conv1x1: the extension was built without CUTLASS headers: pip install "
           "nvidia-cutlass and rebuild (or set INCEPTION_FAST_CUTLASS_DIR to a CUTLASS checkout)");
  return false;
#endif
}

namespace {

void cuda_gemm_conv1x1(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const at::Tensor& out, int64_t col_offset, bool relu, int64_t tile_n, bool tf32,
                       int64_t sm_limit, int64_t split_k, int64_t tile_m) {
  PreparedLaunch prepared;
  if (prepare_gemm(x, weight, bias, out, col_offset, relu, tile_n, tf32, sm_limit, tile_m, split_k, prepared)) {
    launch_prepared_or_raise("cuda_gemm_conv1x1", prepared);
  }
}

// Arguments of cuda_conv_fprop on any device (the Meta kernel runs these too). x [N, H, W, Cx]
// and out [N, P, Q, Cout] contiguous (NHWC), weight [K, R, S, C] contiguous; the conv reads
// x's channels [in_c0, in_c0 + C) and writes out's [out_c0, out_c0 + K).
void check_conv_fprop(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                      int64_t in_c0, int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w, int64_t tile_n,
                      bool tf32, int64_t sm_limit, int64_t tile_m, int64_t split_k) {
  OP_CHECK(sm_limit >= 0, "cuda_conv_fprop: sm_limit must be 0 (every SM) or a positive SM count, got ", sm_limit);
  OP_CHECK(tile_n == 0 || tile_n == 64 || tile_n == 96 || tile_n == 128, "cuda_conv_fprop: tile_n must be 0 "
           "(chosen per problem), 64, 96 or 128, got ", tile_n);
  OP_CHECK(tile_m == 0 || tile_m == 64 || tile_m == 128 || tile_m == 256, "cuda_conv_fprop: tile_m must be 0 "
           "(chosen per problem), 64, 128 or 256, got ", tile_m);
  check_narrow_tile("cuda_conv_fprop", x, tile_m, tile_n);
  OP_CHECK(tile_m != 256 || ((tile_n == 0 || tile_n == 96 || tile_n == 128) && x.scalar_type() != at::kFloat),
           "cuda_conv_fprop: 256-row tiles are built 96 or 128 wide for fp16 and bf16; got tile_n ", tile_n,
           " (", x.scalar_type(), "). Pass tile_m=0 or 128, or tile_n=96 or 128");
  check_cutlass_dtype("cuda_conv_fprop", x, tf32);
  check_split_k("cuda_conv_fprop", x, split_k, tile_m, tile_n);
  OP_CHECK(x.dim() == 4 && x.is_contiguous(), "cuda_conv_fprop: x must be a contiguous NHWC tensor, got shape ",
           x.sizes());
  OP_CHECK(weight.device() == x.device() && weight.scalar_type() == x.scalar_type() && weight.dim() == 4 &&
               weight.is_contiguous(),
           "cuda_conv_fprop: weight must be a contiguous [K, R, S, C] tensor of x's dtype on x's device, got ",
           weight.scalar_type(), " ", weight.sizes(), " on ", weight.device());
  OP_CHECK(out.device() == x.device() && out.scalar_type() == x.scalar_type() && out.dim() == 4 &&
               out.is_contiguous(),
           "cuda_conv_fprop: out must be a contiguous NHWC tensor of x's dtype on x's device, got ",
           out.scalar_type(), " ", out.sizes(), " on ", out.device());
  OP_CHECK(bias.device() == x.device() && bias.scalar_type() == at::kFloat && bias.dim() == 1 &&
               bias.size(0) == weight.size(0) && bias.is_contiguous(),
           "cuda_conv_fprop: bias must be a contiguous float32 tensor of ", weight.size(0), " entries on ",
           x.device(), ", got ", bias.scalar_type(), " ", bias.sizes(), " on ", bias.device());
  const int64_t k = weight.size(0), r = weight.size(1), s = weight.size(2), c = weight.size(3);
  OP_CHECK(c > 0 && c % 8 == 0 && k > 0 && k % 8 == 0, "cuda_conv_fprop: ", c, " input and ", k,
           " output channels; the kernel needs positive multiples of 8");
  OP_CHECK(x.size(3) % 8 == 0 && out.size(3) % 8 == 0, "cuda_conv_fprop: x has ", x.size(3), " and out ",
           out.size(3), " channels; their rows must be 16-byte aligned for TMA (multiples of 8 channels)");
  OP_CHECK(in_c0 >= 0 && in_c0 % 8 == 0 && in_c0 + c <= x.size(3), "cuda_conv_fprop: in_c0 ", in_c0,
           " must be a multiple of 8 with in_c0 + ", c, " channels within x's ", x.size(3));
  OP_CHECK(out_c0 >= 0 && out_c0 % 8 == 0 && out_c0 + k <= out.size(3), "cuda_conv_fprop: out_c0 ", out_c0,
           " must be a multiple of 8 with out_c0 + ", k, " channels within out's ", out.size(3));
  OP_CHECK(stride >= 1 && pad_h >= 0 && pad_w >= 0 && pad_h < r && pad_w < s, "cuda_conv_fprop: stride ", stride,
           " and padding (", pad_h, ", ", pad_w, ") must be positive and smaller than the ", r, "x", s, " window");
  const int64_t p = (x.size(1) + 2 * pad_h - r) / stride + 1, q = (x.size(2) + 2 * pad_w - s) / stride + 1;
  OP_CHECK(x.size(1) + 2 * pad_h >= r && x.size(2) + 2 * pad_w >= s && out.size(0) == x.size(0) &&
               out.size(1) == p && out.size(2) == q,
           "cuda_conv_fprop: out must be [", x.size(0), ", ", p, ", ", q, ", C] for x of shape ", x.sizes(),
           ", got ", out.sizes());
  OP_CHECK(x.numel() < (int64_t{1} << 31) && out.numel() < (int64_t{1} << 31),
           "cuda_conv_fprop: tensors of 2^31 or more elements are not supported; split the batch");
  if (x.is_cuda()) {
    for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&x, "x"}, {&weight, "weight"},
                                  {&bias, "bias"}, {&out, "out"}}) {
      OP_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, "cuda_conv_fprop: ", name,
               " must be 16-byte aligned (TMA)");
    }
  }
}

void cuda_conv_fprop_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                          int64_t in_c0, int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w,
                          bool /*relu*/, int64_t tile_n, bool tf32, int64_t sm_limit, int64_t tile_m,
                          int64_t split_k) {
  check_conv_fprop(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, tile_n, tf32, sm_limit, tile_m,
                   split_k);
}

}  // namespace

bool prepare_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                  int64_t in_c0, int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w,
                  [[maybe_unused]] bool relu, [[maybe_unused]] int64_t tile_n, bool tf32,
                  [[maybe_unused]] int64_t sm_limit, [[maybe_unused]] int64_t tile_m,
                  [[maybe_unused]] int64_t split_k, [[maybe_unused]] PreparedLaunch& prepared) {
  check_conv_fprop(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, tile_n, tf32, sm_limit, tile_m,
                   split_k);
#if defined(INCEPTION_FAST_WITH_CUTLASS_CONV)
  if (out.numel() == 0) return false;
  ConvFpropArgs args{};
  args.x = x.data_ptr();
  args.w = weight.data_ptr();
  args.bias = bias.data_ptr<float>();
  args.out = out.data_ptr();
  args.n = static_cast<int>(x.size(0));
  args.h = static_cast<int>(x.size(1));
  args.w_in = static_cast<int>(x.size(2));
  args.k = static_cast<int>(weight.size(0));
  args.r = static_cast<int>(weight.size(1));
  args.s = static_cast<int>(weight.size(2));
  args.c = static_cast<int>(weight.size(3));
  args.stride = static_cast<int>(stride);
  args.pad_h = static_cast<int>(pad_h);
  args.pad_w = static_cast<int>(pad_w);
  args.p = static_cast<int>(out.size(1));
  args.q = static_cast<int>(out.size(2));
  args.in_pitch = x.size(3);
  args.in_c0 = in_c0;
  args.out_pitch = out.size(3);
  args.out_c0 = out_c0;
  args.relu = relu;
  const c10::cuda::CUDAGuard guard(x.device());
  int sm_count = 0;
  OP_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, x.device().index()) == cudaSuccess,
           "cuda_conv_fprop: cannot query the SM count of ", x.device());
  args.sm_count = usable_sms(sm_count, sm_limit, 1);
  const ConvTile chosen = conv_fprop_tile(int64_t(args.n) * args.p * args.q, args.k, args.stride, args.sm_count,
                                          x.scalar_type() != at::kFloat);
  // A width given alone keeps 128-row tiles; a height given alone takes the model's width for it.
  args.tile_m = tile_m != 0 ? static_cast<int>(tile_m) : tile_n != 0 ? 128 : chosen.m;
  args.tile_n = tile_n != 0 ? static_cast<int>(tile_n)
                : args.tile_m == chosen.m ? chosen.n
                                          : conv_fprop_tile_n(int64_t(args.n) * args.p * args.q, args.k,
                                                              args.sm_count, args.tile_m);
  args.split = split_k_args(x, split_k);
  const char* error = "no kernel is built for this tile shape";
  if (args.split.splits > 1) {
    error = x.scalar_type() == at::kHalf ? prepare_conv_fprop_split_k<ConvDtype::kHalf>(args, prepared)
                                         : prepare_conv_fprop_split_k<ConvDtype::kBFloat16>(args, prepared);
  } else if (args.tile_m == 64) {  // 64 x 64, fp16 or bf16 (check_narrow_tile)
    error = x.scalar_type() == at::kHalf ? prepare_conv_fprop<ConvDtype::kHalf, 64, 64>(args, prepared)
                                         : prepare_conv_fprop<ConvDtype::kBFloat16, 64, 64>(args, prepared);
  } else if (args.tile_m == 256) {
    error = by_tile<96, 128>(args.tile_n, [&](auto tile) {
      return by_dtype<ConvDtype>(x.scalar_type(), [&](auto dtype) -> const char* {
        if constexpr (decltype(dtype)::value == ConvDtype::kTf32) {
          return "no kernel is built for this tile shape";
        } else {
          return prepare_conv_fprop<decltype(dtype)::value, 256, decltype(tile)::value>(args, prepared);
        }
      });
    });
  } else {
    error = by_tile<64, 96, 128>(args.tile_n, [&](auto tile) {
      return by_dtype<ConvDtype>(x.scalar_type(), [&](auto dtype) {
        return prepare_conv_fprop<decltype(dtype)::value, 128, decltype(tile)::value>(args, prepared);
      });
    });
  }
  OP_CHECK(error == nullptr, "cuda_conv_fprop: ", error);
  return true;
#else
  OP_CHECK(false, "cuda_conv_fprop: the extension was built without CUTLASS's headers (include/ and "
           "tools/util/include/): pip install nvidia-cutlass and rebuild (or set INCEPTION_FAST_CUTLASS_DIR to a "
           "CUTLASS checkout)");
  return false;
#endif
}

namespace {

void cuda_conv_fprop(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                     int64_t in_c0, int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w, bool relu,
                     int64_t tile_n, bool tf32, int64_t sm_limit, int64_t tile_m, int64_t split_k) {
  PreparedLaunch prepared;
  if (prepare_conv(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, relu, tile_n, tf32, sm_limit, tile_m,
                   split_k, prepared)) {
    launch_prepared_or_raise("cuda_conv_fprop", prepared);
  }
}

// cuda_op_launches: a stage's CUTLASS op launches in one call, one after another on the current
// stream, each on every SM; never traced (torch.compile sees the single ops), so it has no Meta
// kernel. Each launch is one row of kLaunchFields in `params`; its weight and bias are the
// entries of `weights` and `biases` at its row. The row's buffers index (input, work, output),
// as the packed stage's do (packed_layout.BUF_*).
enum LaunchField : int {
  kLaunchKind, kLaunchSrc, kLaunchDst, kLaunchInC0, kLaunchOutC0, kLaunchStride, kLaunchPadH, kLaunchPadW,
  kLaunchRelu, kLaunchTileN, kLaunchTileM, kLaunchTf32, kLaunchSplitK, kLaunchFields
};
constexpr int64_t kLaunchGemm = 0, kLaunchConv = 1;

void cuda_op_launches(const at::Tensor& input, const at::Tensor& work, const at::Tensor& output,
                      at::TensorList weights, at::TensorList biases, at::IntArrayRef params) {
  const size_t count = weights.size();
  OP_CHECK(biases.size() == count && params.size() == count * kLaunchFields, "cuda_op_launches: ", count,
           " weights, ", biases.size(), " biases and ", params.size(), " params; each launch takes one weight, one "
           "bias and ", int(kLaunchFields), " params");
  const at::Tensor* buffers[3] = {&input, &work, &output};
  for (size_t i = 0; i < count; ++i) {
    const int64_t* p = params.data() + i * kLaunchFields;
    OP_CHECK(p[kLaunchSrc] >= 0 && p[kLaunchSrc] < 3 && p[kLaunchDst] > 0 && p[kLaunchDst] < 3,
             "cuda_op_launches: launch ", i, " reads buffer ", p[kLaunchSrc], " and writes buffer ", p[kLaunchDst],
             "; it reads 0 (input), 1 (work) or 2 (output) and writes 1 or 2");
    const at::Tensor& src = *buffers[p[kLaunchSrc]];
    const at::Tensor& dst = *buffers[p[kLaunchDst]];
    if (p[kLaunchKind] == kLaunchGemm) {
      cuda_gemm_conv1x1(src, weights[i], biases[i], dst, p[kLaunchOutC0], p[kLaunchRelu] != 0, p[kLaunchTileN],
                        p[kLaunchTf32] != 0, int64_t{0}, p[kLaunchSplitK], p[kLaunchTileM]);
    } else {
      OP_CHECK(p[kLaunchKind] == kLaunchConv, "cuda_op_launches: launch ", i, " is of kind ", p[kLaunchKind],
               "; 0 is the GEMM op, 1 the k x k conv op");
      cuda_conv_fprop(src, weights[i], biases[i], dst, p[kLaunchInC0], p[kLaunchOutC0], p[kLaunchStride],
                      p[kLaunchPadH], p[kLaunchPadW], p[kLaunchRelu] != 0, p[kLaunchTileN], p[kLaunchTf32] != 0,
                      int64_t{0}, p[kLaunchTileM], p[kLaunchSplitK]);
    }
  }
}

}  // namespace

TORCH_LIBRARY(inception_fast, m) {
  m.def(
      "cuda_conv_stage(Tensor input, Tensor(a!) work, Tensor(b!) output, int[] problems, Tensor weights, "
      "Tensor bias, Tensor col_dst, Tensor col_flags) -> ()");
  m.def(
      "cuda_gemm_conv1x1(Tensor x, Tensor weight, Tensor bias, Tensor(a!) out, int col_offset, bool relu, "
      "int tile_n=0, bool tf32=False, int sm_limit=0, int split_k=0, int tile_m=0) -> ()");
  m.def(
      "cuda_conv_fprop(Tensor x, Tensor weight, Tensor bias, Tensor(a!) out, int in_c0, int out_c0, int stride, "
      "int pad_h, int pad_w, bool relu, int tile_n=0, bool tf32=False, int sm_limit=0, int tile_m=0, "
      "int split_k=0) -> ()");
  m.def(
      "cuda_op_launches(Tensor input, Tensor(a!) work, Tensor(b!) output, Tensor[] weights, Tensor[] biases, "
      "int[] params) -> ()");
}

TORCH_LIBRARY_IMPL(inception_fast, CUDA, m) {
  m.impl("cuda_conv_stage", &cuda_conv_stage);
  m.impl("cuda_gemm_conv1x1", &cuda_gemm_conv1x1);
  m.impl("cuda_conv_fprop", &cuda_conv_fprop);
  m.impl("cuda_op_launches", &cuda_op_launches);
}

// The argument checks, without a launch: FakeTensor (torch.compile) and meta tensors run them.
TORCH_LIBRARY_IMPL(inception_fast, Meta, m) {
  m.impl("cuda_gemm_conv1x1", &cuda_gemm_conv1x1_meta);
  m.impl("cuda_conv_fprop", &cuda_conv_fprop_meta);
}

}  // namespace inception_fast
