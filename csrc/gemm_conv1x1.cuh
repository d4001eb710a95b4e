// The CUTLASS 3.x sm90 kernels behind gemm_conv1x1.h: TMA loads into a multi-stage smem ring
// filled by a producer warp, WGMMA in two consumer warpgroups, fp32 accumulation, and a TMA-store
// epilogue that adds the per-channel bias and clamps (ReLU or not) before writing the input dtype
// (fp32 on TF32 tensor cores: rounded to TF32 on the way out, see ClampRoundTf32).
// Included by one .cu file per dtype, which defines every tile width's entry point
// (INCEPTION_FAST_DEFINE_GEMM_CONV1X1).
#pragma once

// CUTLASS's device-side assert()s are calls that ptxas cannot keep inside a WGMMA pipeline: it
// then serializes every wgmma (ptxas C7510) and spills. Only these files include CUTLASS.
#ifndef NDEBUG
#define NDEBUG
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "gemm_conv1x1.h"
#include "prepared_launch.h"

#if defined(INCEPTION_FAST_WITH_CUTLASS)

// torch builds extensions as C++20, where CUTLASS's (never instantiated here) sm100 collectives
// capture `this` implicitly, a deprecation warning (#2908-D) when the headers are parsed.
#pragma nv_diag_suppress 2908
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#pragma nv_diag_default 2908

#include "split_k_scheduler.cuh"

namespace inception_fast {
namespace gemm_conv1x1 {

template <typename T>
struct CutlassElement;
template <>
struct CutlassElement<__half> {
  using type = cutlass::half_t;
};
template <>
struct CutlassElement<__nv_bfloat16> {
  using type = cutlass::bfloat16_t;
};
// fp32 operands run on TF32 WGMMA (CUTLASS's sm90 builders map float to tfloat32_t), which reads
// the top 19 bits of each value: exact for values already rounded to TF32.
template <>
struct CutlassElement<float> {
  using type = float;
};

// Elements per 16 bytes: TMA's alignment of rows and bases.
template <class Element>
constexpr int kAlignment = 16 / static_cast<int>(sizeof(Element));

// The K extent of a CTA tile: one 128-byte row per k-block (64 fp16/bf16 or 32 fp32 values), the
// widest smem swizzle, so a tile is the same bytes in every dtype and the pipeline as deep.
template <class Element>
using TileK = cute::Int<128 / static_cast<int>(sizeof(Element))>;

// Clamp (ReLU or identity), then round to TF32 (10 mantissa bits) to nearest, ties away from
// zero: the fp32 ops run on TF32 tensor cores, which truncate what they read, and a stored
// activation rounded the way cuDNN rounds its TF32 inputs is read exactly by the next conv. The
// Triton stage kernel stores its TF32-mode outputs the same way (kernels/triton/tf32.py).
template <typename T>
struct ClampRoundTf32 {
  using Arguments = typename cutlass::epilogue::thread::Clamp<T>::Arguments;

  CUTLASS_HOST_DEVICE static float round(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    bits = (bits + 0x1000u) & 0xFFFFE000u;
    memcpy(&value, &bits, sizeof(bits));
    return value;
  }

  CUTLASS_HOST_DEVICE T operator()(T const& value, Arguments const& args = Arguments()) const {
    return round(cutlass::epilogue::thread::Clamp<T>{}(value, args));
  }
};

template <typename T, int N>
struct ClampRoundTf32<cutlass::Array<T, N>> {
  using Arguments = typename ClampRoundTf32<T>::Arguments;

  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& values,
                                                      Arguments const& args = Arguments()) const {
    cutlass::Array<T, N> out = cutlass::epilogue::thread::Clamp<cutlass::Array<T, N>>{}(values, args);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = ClampRoundTf32<T>::round(out[i]);
    return out;
  }
};

// The epilogue's activation per output element type: a plain clamp, or the clamp that rounds fp32
// to TF32.
template <class Element>
struct Activation {
  template <class T>
  using Fn = cutlass::epilogue::thread::Clamp<T>;
};
template <>
struct Activation<float> {
  template <class T>
  using Fn = ClampRoundTf32<T>;
};

// The epilogue of both ops (this GEMM, conv_fprop.cuh's conv): D = act(acc + bias), no source
// C, in D's dtype. The bias is per output channel = per column n of D, broadcast down the rows
// (CUTLASS's bias stride (_0, _1): "PerCol"; "PerRow" would index it by pixel). Clamp with a
// runtime lower bound is ReLU (0) or the identity (-inf) without a second instantiation
// (set_bias_act_and_device sets it); for fp32 it also rounds to TF32.
template <class Element, class TileShape, class ClusterShape, class LayoutD, class Schedule>
using BiasActEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignment<Element>, Element,
    LayoutD, kAlignment<Element>, Schedule,
    cutlass::epilogue::fusion::LinCombPerColBiasEltAct<Activation<Element>::template Fn, Element, float, float>>::
    CollectiveOp;

// One GEMM kernel: a TileM x TileN x TileK CTA tile (TileM 128, or 64 for 64 x 64 tiles),
// persistent CTAs over the tiles. The 128- and
// 256-wide tiles run in clusters of 2 CTAs along M that share each weight tile through TMA
// multicast: per k-block the weight tile is as large as (128) or twice (256) the activation
// tile, and without sharing, L2 bandwidth can bound the deep GEMMs (K = 1024, 1536) before
// WGMMA does. The 64-wide tile is for narrow, memory-bound GEMMs: no cluster.
// SplitK: the K loop cut into ranges (split_k_scheduler.cuh), on cooperative 128 x 64 tiles (the
// stream-K schedulers run under the cooperative kernel only).
template <typename T, int TileN, bool SplitK = false, int TileM = 128>
struct GemmKernel {
  static_assert(!SplitK || TileN == kSplitKTileN, "split-K runs 128 x 64 tiles");
  static_assert(TileM == 128 || (TileM == 64 && TileN == 64 && !SplitK), "64-row tiles are 64 x 64, ping-pong");
  using Element = typename CutlassElement<T>::type;
  // The activation is A = [M, K] with K contiguous: row-major. The weight [N, K] is B = [K, N]
  // with K contiguous: column-major in CUTLASS's K x N view (the "TN" GEMM that WGMMA reads
  // straight from K-major smem). D = [M, N] row-major with a leading dimension of the output's
  // channel count.
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, TileK<Element>>;
  static constexpr int kClusterM = TileN == 64 ? 1 : 2;
  using ClusterShape = cute::Shape<cute::Int<kClusterM>, cute::_1, cute::_1>;
  // 128 x 256: both consumer warpgroups share the tile (64 x 256 accumulators each fit in
  // registers). Narrower tiles: ping-pong, one warpgroup per tile, so one tile's epilogue
  // overlaps the other's mainloop; that matters here, where K is short (6 to 24 k-blocks).
  static constexpr bool kCooperative = TileN == 256 || SplitK;
  using MainloopSchedule = std::conditional_t<kCooperative, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                              cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpilogueSchedule = std::conditional_t<kCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                              cutlass::epilogue::TmaWarpSpecialized>;
  using Epilogue = BiasActEpilogue<Element, TileShape, ClusterShape, LayoutD, EpilogueSchedule>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlignment<Element>, Element, LayoutB,
      kAlignment<Element>, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      std::conditional_t<SplitK, SplitKSchedulerTag, void>>;
};

// The entry of a CUTLASS 3.x kernel (this GEMM, conv_fprop.cuh's conv); its body exists only in
// the sm_90a pass (WGMMA and TMA need the "a" features), so the compute_80 PTX carries an empty
// stub that the host never launches. Launched with programmatic dependent launch
// (programmatic_launch.h), it lets the next kernel be scheduled at once, and waits for the kernel
// before it (griddepcontrol.wait) where CUTLASS does with CUTLASS_ENABLE_GDC_FOR_SM90 (a build
// flag, extension.cutlass_flags): in each producer warp after the kernel's set-up (barrier init,
// cluster sync, TMA descriptor prefetch, none of which touches global memory), before its first
// load. Every other global access (the split-K fixup, the epilogue's bias loads and stores)
// follows the mainloop, so that wait too. The set-up then overlaps the kernel before; waiting first
// thing, as this entry did, serialized it. Both are no-ops in a plain launch.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::MaxThreadsPerBlock, Kernel::MinBlocksPerMultiprocessor)
    kernel_entry(CUTLASS_GRID_CONSTANT typename Kernel::Params const params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(cutlass::arch::IsGdcGloballyEnabled,
                "the CUTLASS kernels wait for the kernel before them only with CUTLASS_ENABLE_GDC_FOR_SM90");
  asm volatile("griddepcontrol.launch_dependents;");
  extern __shared__ char smem[];
  Kernel{}(params, smem);
#endif
}

// Fills `out` with kernel_entry<Kernel>'s launch: `params`, its grid and block, and clusters of
// `cluster_m` CTAs along M (launch_prepared issues it).
template <class Kernel>
void prepare_entry(dim3 grid, int cluster_m, dim3 block, int smem_bytes, const typename Kernel::Params& params,
                   PreparedLaunch& out) {
  out.function = reinterpret_cast<const void*>(&kernel_entry<Kernel>);
  out.grid = grid;
  out.block = block;
  out.smem_bytes = smem_bytes;
  out.cluster_m = cluster_m;
  out.store(params);
}

constexpr int kMaxDevices = 64;

// Per device: whether it is Hopper (sm_90) and its SM count, asked once.
struct DeviceInfo {
  int sm_count = 0;  // 0: not asked yet
  bool hopper = false;
};

inline const char* device_info(int device, DeviceInfo& out) {
  static DeviceInfo known[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return "device index out of range";
  DeviceInfo& info = known[device];
  if (info.sm_count == 0) {
    int major = 0, minor = 0, sms = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return "cannot query the device";
    }
    info.hopper = major == 9 && minor == 0;
    info.sm_count = sms;
  }
  out = info;
  return nullptr;
}

// The epilogue both ops run, D = act(acc + bias) without a source C (ReLU: clamp at 0, else at
// -inf), and the device the kernel runs on.
template <class Arguments>
void set_bias_act_and_device(Arguments& arguments, const float* bias, bool relu, int device, int sm_count) {
  arguments.epilogue.ptr_C = nullptr;
  auto& fusion = arguments.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;
  fusion.bias_ptr = bias;
  fusion.activation.lower_bound = relu ? 0.0f : -std::numeric_limits<float>::infinity();
  fusion.activation.upper_bound = std::numeric_limits<float>::infinity();
  arguments.hw_info.device_id = device;
  arguments.hw_info.sm_count = sm_count;
}

// The kernel's dynamic shared memory, reserved once per device; nullptr on success.
template <class Kernel>
const char* reserve_shared_memory(int device) {
  static bool reserved[kMaxDevices] = {};
  if (!reserved[device]) {
    if (cudaFuncSetAttribute(kernel_entry<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Kernel::SharedStorageSize) != cudaSuccess) {
      return "cannot reserve the kernel's shared memory";
    }
    reserved[device] = true;
  }
  return nullptr;
}

template <typename T, int TileN, bool SplitK = false, int TileM = 128>
const char* prepare(const GemmConv1x1Args& args, PreparedLaunch& out) {
  using Types = GemmKernel<T, TileN, SplitK, TileM>;
  using Kernel = typename Types::Kernel;
  using Element = typename Types::Element;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return "no current CUDA device";
  DeviceInfo info;
  if (const char* error = device_info(device, info)) return error;
  // sm_90a SASS runs on compute capability 9.0 only; elsewhere the empty PTX stub would run.
  if (!info.hopper) return "the CUTLASS kernels need a Hopper GPU (compute capability 9.0)";

  using StrideA = typename Kernel::StrideA;
  using StrideB = typename Kernel::StrideB;
  using StrideC = typename Kernel::StrideC;
  using StrideD = typename Kernel::StrideD;
  // (row, column, batch) strides; one batch.
  const StrideA stride_a = cute::make_stride(args.k, cute::Int<1>{}, args.m * args.k);
  const StrideB stride_b = cute::make_stride(args.k, cute::Int<1>{}, args.n * args.k);
  const StrideD stride_d = cute::make_stride(args.ldd, cute::Int<1>{}, args.m * args.ldd);
  const StrideC stride_c = stride_d;

  typename Kernel::Arguments arguments{};
  arguments.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  arguments.problem_shape = {static_cast<int>(args.m), static_cast<int>(args.n), static_cast<int>(args.k), 1};
  arguments.mainloop = {static_cast<const Element*>(args.a), stride_a, static_cast<const Element*>(args.b), stride_b};
  arguments.epilogue.dC = stride_c;
  arguments.epilogue.ptr_D = static_cast<Element*>(args.d);
  arguments.epilogue.dD = stride_d;
  set_bias_act_and_device(arguments, args.bias, args.relu, device,
                          usable_sms(info.sm_count, args.sm_count, Types::kClusterM));

  if constexpr (SplitK) set_split_k<Kernel>(arguments, args.split);
  if (!Kernel::can_implement(arguments)) {
    return "CUTLASS cannot run this problem (sizes or alignment)";
  }
  void* workspace = SplitK ? args.split.locks : nullptr;
  const typename Kernel::Params params = Kernel::to_underlying_arguments(arguments, workspace);
  if constexpr (SplitK) {
    if (const char* error = check_split_k<Kernel>(params, args.split)) return error;
  } else if (Kernel::get_workspace_size(arguments) != 0) {
    // The persistent data-parallel scheduler and this epilogue keep no state in global memory.
    return "the kernel unexpectedly needs a workspace";
  }

  constexpr int kSmemBytes = Kernel::SharedStorageSize;
  if (const char* error = reserve_shared_memory<Kernel>(device)) return error;
  const dim3 grid = Kernel::get_grid_shape(params);  // persistent: about one CTA per SM, whole clusters
  const dim3 block = Kernel::get_block_shape();
  prepare_entry<Kernel>(grid, Types::kClusterM, block, kSmemBytes, params, out);
  return nullptr;
}

}  // namespace gemm_conv1x1
}  // namespace inception_fast

#endif  // INCEPTION_FAST_WITH_CUTLASS

// Defines the op's entry point for one (dtype, tile width), declared in gemm_conv1x1.h; inside
// namespace inception_fast.
#define INCEPTION_FAST_DEFINE_GEMM_CONV1X1(DTYPE, T, TILE_N)                                          \
  template <>                                                                                         \
  const char* prepare_gemm_conv1x1<GemmDtype::DTYPE, TILE_N>(const GemmConv1x1Args& args,            \
                                                              PreparedLaunch& out) {                 \
    return gemm_conv1x1::prepare<T, TILE_N>(args, out);                                              \
  }

// Defines the 64 x 64 tiles' entry point of one dtype (gemm_conv1x1.h); inside namespace
// inception_fast.
#define INCEPTION_FAST_DEFINE_GEMM_CONV1X1_NARROW(DTYPE, T)                                            \
  template <>                                                                                         \
  const char* prepare_gemm_conv1x1_narrow<GemmDtype::DTYPE>(const GemmConv1x1Args& args,             \
                                                            PreparedLaunch& out) {                   \
    return gemm_conv1x1::prepare<T, 64, false, 64>(args, out);                                       \
  }

// Defines the split-K entry point of one dtype (gemm_conv1x1.h); inside namespace inception_fast.
#define INCEPTION_FAST_DEFINE_GEMM_CONV1X1_SPLIT_K(DTYPE, T)                                           \
  template <>                                                                                         \
  const char* prepare_gemm_conv1x1_split_k<GemmDtype::DTYPE>(const GemmConv1x1Args& args,            \
                                                             PreparedLaunch& out) {                  \
    return gemm_conv1x1::prepare<T, kSplitKTileN, true>(args, out);                                  \
  }
