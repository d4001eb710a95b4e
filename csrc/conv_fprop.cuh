// The CUTLASS 3.x sm90 implicit-GEMM convolution behind conv_fprop.h: the activation tile
// arrives by im2col TMA (the padding is its out-of-bounds zero fill), the weight tile by TMA,
// both into a multi-stage smem ring filled by a producer warp; two consumer warpgroups run WGMMA
// with fp32 accumulation in persistent CTAs, on alternate 128-row output tiles (ping-pong: one
// tile's epilogue runs under the other's mainloop) or on the two halves of one 256-row tile
// (cooperative: each weight tile feeds twice the rows); a TMA-store epilogue adds the per-channel
// bias, clamps (ReLU or not) and writes the input dtype into the output's channel slice (fp32, on
// TF32 tensor cores: rounded to TF32). Included by one .cu file per dtype, which defines every tile
// shape's entry point (INCEPTION_FAST_DEFINE_CONV_FPROP).
#pragma once

#include "conv_fprop.h"
#include "gemm_conv1x1.cuh"  // NDEBUG before CUTLASS; element types, device query, entry, epilogue

#if defined(INCEPTION_FAST_WITH_CUTLASS_CONV)

#pragma nv_diag_suppress 2908
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/detail.hpp>
#pragma nv_diag_default 2908

#include "conv_mainloop_in_gemm_kernel.cuh"

namespace inception_fast {
namespace conv_fprop {

// CUTLASS 4.2's own sm90 conv kernel runs one CTA per output tile with one consumer warpgroup
// (its register split allows one CTA per SM), so each tile's pipeline fill and epilogue leave the
// tensor cores idle: on an H100 it took 0.99-1.23x this kernel's time on Inception-v4's k x k
// convs at batch 256. The same mainloop collective runs here inside the persistent ping-pong
// GEMM kernel (conv_mainloop_in_gemm_kernel.cuh), which sees the linearized problem (M = N*P*Q,
// N = K, K = (C, S, R)) and writes the output as a plain [M, N] matrix whose rows are the output
// pixels, `out_pitch` apart.
// (The conv dispatch policy refuses CUTLASS's own persistent schedule tags, not types derived
// from the GEMM kernel's.)
struct PersistentPingpong : cutlass::gemm::KernelTmaWarpSpecializedPingpong {};
struct PersistentCooperative : cutlass::gemm::KernelTmaWarpSpecializedCooperative {};

// SplitK: the K loop cut into ranges (split_k_scheduler.cuh), on cooperative 128 x 64 tiles (the
// stream-K schedulers run under the cooperative kernel only).
template <typename T, int TileM, int TileN, bool SplitK = false>
struct ConvKernel {
  static_assert(TileM == 64 || TileM == 128 || TileM == 256,
                "64- and 128-row tiles run ping-pong, 256-row tiles cooperative");
  static_assert(!SplitK || (TileM == kSplitKTileM && TileN == kSplitKTileN), "split-K runs 128 x 64 tiles");
  using Element = typename gemm_conv1x1::CutlassElement<T>::type;
  // GEMM view: M = N*P*Q output pixels, N = K output channels, K = R*S*C; the activation
  // [N, H, W, C] and the weight [K, R, S, C] are both channel-innermost (NHWC / KRSC).
  using Layout = cutlass::layout::TensorNHWC;
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Shape<gemm_conv1x1::TileK<Element>>>;
  // 256-row tiles: both consumer warpgroups on one tile, 128 rows each (cuDNN's choice for
  // Inception-v4's deep 3x3 convs, 256 x 96 and 256 x 128): per k-block a CTA loads 3/4 of the
  // bytes per multiply-add that a 128-row tile loads, and both warpgroups issue WGMMA at once.
  static constexpr bool kCooperative = TileM == 256 || SplitK;
  // CTAs per cluster along M (output pixels): the 96- and 128-wide tiles run in pairs that share
  // each weight tile by TMA multicast, as the GEMM op's do. On an H100, Inception-v4's k x k convs
  // on those tiles at batch 256 took 0.88-1.01x the time of single CTAs (InceptionA's 96-to-96
  // 3x3 0.89x, ReductionA's 0.90-0.93x, InceptionB's 0.88-0.91x).
  static constexpr int kClusterM = TileN == 64 ? 1 : 2;
  using ClusterShape = cute::Shape<cute::Int<kClusterM>, cute::_1, cute::_1>;
  using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
  using Epilogue = gemm_conv1x1::BiasActEpilogue<
      Element, TileShape, ClusterShape, cutlass::layout::RowMajor,
      std::conditional_t<kCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                         cutlass::epilogue::TmaWarpSpecialized>>;
  // The builder's collective for one consumer warpgroup per tile (what ping-pong runs in each
  // warpgroup), then the same collective under the persistent schedule; cooperative tiles split
  // the MMA over two warpgroups along M (the builder's cooperative layout, which its
  // non-persistent dispatch policy does not take).
  using Built = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      Element, Layout, gemm_conv1x1::kAlignment<Element>, Element, Layout, gemm_conv1x1::kAlignment<Element>, float,
      TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using Policy = cutlass::conv::MainloopSm90TmaGmmaWarpSpecializedImplicitGemm<
      cutlass::conv::Operator::kFprop, Built::DispatchPolicy::Stages, Built::NumSpatialDimensions, ClusterShape,
      std::conditional_t<kCooperative, PersistentCooperative, PersistentPingpong>>;
  using ElementMma = std::conditional_t<std::is_same_v<Element, float>, cutlass::tfloat32_t, Element>;
  using TiledMma = std::conditional_t<
      kCooperative,
      decltype(cute::make_tiled_mma(cute::GMMA::ss_op_selector<ElementMma, ElementMma, float, TileShape,
                                                               cute::GMMA::Major::K, cute::GMMA::Major::K>(),
                                    cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{})),
      typename Built::TiledMma>;
  using Mainloop = ConvMainloopInGemmKernel<cutlass::conv::collective::CollectiveConv<
      Policy, TileShape, typename Built::ElementA, typename Built::ElementB, TiledMma,
      cutlass::conv::collective::detail::Sm90ImplicitGemmTileTraits<typename Built::GmemTiledCopyA,
                                                                     typename Built::SmemLayoutA>,
      cutlass::conv::collective::detail::Sm90ImplicitGemmTileTraits<typename Built::GmemTiledCopyB,
                                                                     typename Built::SmemLayoutB>>>;
  // (M, N, (C, S, R), L): the linearized conv problem with a runtime L (the epilogue's tensor
  // maps are typed by it).
  using GemmShape = cute::Shape<int, int, cute::Shape<int, int, int>, int>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<GemmShape, Mainloop, Epilogue,
                                                      std::conditional_t<SplitK, SplitKSchedulerTag, void>>;
};

template <typename T, int TileM, int TileN, bool SplitK = false>
const char* prepare(const ConvFpropArgs& a, PreparedLaunch& out) {
  using Types = ConvKernel<T, TileM, TileN, SplitK>;
  using Kernel = typename Types::Kernel;
  using Element = typename Types::Element;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return "no current CUDA device";
  gemm_conv1x1::DeviceInfo info;
  if (const char* error = gemm_conv1x1::device_info(device, info)) return error;
  if (!info.hopper) return "the CUTLASS kernels need a Hopper GPU (compute capability 9.0)";

  // Channel slices: the activation and output strides are their buffers' pitches, and the base
  // pointers start at the slices' first channels.
  const typename Types::ProblemShape problem(
      cutlass::conv::Mode::kCrossCorrelation,
      {a.n, a.h, a.w_in, a.c}, {int64_t(a.h) * a.w_in * a.in_pitch, int64_t(a.w_in) * a.in_pitch, a.in_pitch, 1},
      {a.k, a.r, a.s, a.c}, {int64_t(a.r) * a.s * a.c, int64_t(a.s) * a.c, a.c, 1},
      {int64_t(a.p) * a.q * a.out_pitch, int64_t(a.q) * a.out_pitch, a.out_pitch, 1},
      {a.pad_h, a.pad_w}, {a.pad_h, a.pad_w}, {a.stride, a.stride}, {1, 1}, 1);
  const auto out_shape = problem.shape_C;  // [n, p, q, k] as CUTLASS computed it
  if (out_shape[1] != a.p || out_shape[2] != a.q || out_shape[3] != a.k) {
    return "the output size does not match the convolution's";
  }

  typename Kernel::Arguments arguments{};
  arguments.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  const auto linear = cutlass::conv::detail::get_linearized_problem_shape_MNKL(problem);
  arguments.problem_shape = {cute::get<0>(linear), cute::get<1>(linear), cute::get<2>(linear), 1};
  arguments.mainloop.conv.ptr_A = static_cast<const Element*>(a.x) + a.in_c0;
  arguments.mainloop.conv.ptr_B = static_cast<const Element*>(a.w);
  arguments.mainloop.problem = problem;
  // Output pixels are consecutive rows `out_pitch` apart: (row, column, batch) strides, one batch.
  const int64_t rows = int64_t(a.n) * a.p * a.q;
  const typename Kernel::StrideD stride_d = cute::make_stride(a.out_pitch, cute::Int<1>{}, rows * a.out_pitch);
  arguments.epilogue.dC = stride_d;
  arguments.epilogue.ptr_D = static_cast<Element*>(a.out) + a.out_c0;
  arguments.epilogue.dD = stride_d;
  gemm_conv1x1::set_bias_act_and_device(arguments, a.bias, a.relu, device,
                                        usable_sms(info.sm_count, a.sm_count, Types::kClusterM));

  if constexpr (SplitK) set_split_k<Kernel>(arguments, a.split);
  if (!Kernel::can_implement(arguments)) {
    return "CUTLASS cannot run this convolution (sizes, padding or alignment)";
  }
  void* workspace = SplitK ? a.split.locks : nullptr;
  const typename Kernel::Params params = Kernel::to_underlying_arguments(arguments, workspace);
  if constexpr (SplitK) {
    if (const char* error = check_split_k<Kernel>(params, a.split)) return error;
  } else if (Kernel::get_workspace_size(arguments) != 0) {
    // The persistent data-parallel scheduler and this epilogue keep no state in global memory.
    return "the kernel unexpectedly needs a workspace";
  }

  if (const char* error = gemm_conv1x1::reserve_shared_memory<Kernel>(device)) return error;
  const dim3 grid = Kernel::get_grid_shape(params);  // persistent: about one CTA per SM, whole clusters
  const dim3 block = Kernel::get_block_shape();
  gemm_conv1x1::prepare_entry<Kernel>(grid, Types::kClusterM, block, Kernel::SharedStorageSize, params, out);
  return nullptr;
}

}  // namespace conv_fprop
}  // namespace inception_fast

#else  // without CUTLASS's util headers the op is in the bindings but has no kernel

namespace inception_fast {
namespace conv_fprop {

template <typename T, int TileM, int TileN, bool SplitK = false>
const char* prepare(const ConvFpropArgs&, PreparedLaunch&) {
  return "built without the CUTLASS headers (include/ and tools/util/include/)";
}

}  // namespace conv_fprop
}  // namespace inception_fast

#endif  // INCEPTION_FAST_WITH_CUTLASS_CONV

// Defines the op's entry point for one (dtype, tile shape), declared in conv_fprop.h; inside
// namespace inception_fast.
#define INCEPTION_FAST_DEFINE_CONV_FPROP(DTYPE, T, TILE_M, TILE_N)                                    \
  template <>                                                                                         \
  const char* prepare_conv_fprop<ConvDtype::DTYPE, TILE_M, TILE_N>(const ConvFpropArgs& args,        \
                                                                    PreparedLaunch& out) {           \
    return conv_fprop::prepare<T, TILE_M, TILE_N>(args, out);                                        \
  }

// Defines the split-K entry point of one dtype (conv_fprop.h); inside namespace inception_fast.
#define INCEPTION_FAST_DEFINE_CONV_FPROP_SPLIT_K(DTYPE, T)                                             \
  template <>                                                                                         \
  const char* prepare_conv_fprop_split_k<ConvDtype::DTYPE>(const ConvFpropArgs& args,                \
                                                           PreparedLaunch& out) {                    \
    return conv_fprop::prepare<T, kSplitKTileM, kSplitKTileN, true>(args, out);                      \
  }
