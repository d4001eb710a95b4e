// Split-K for the CUTLASS sm90 kernels that leave most SMs idle (a conv at batch 1 is a dozen
// output tiles over 20+ k-blocks): CUTLASS's stream-K tile scheduler in its split-K mode, each
// output tile's K loop cut into `splits` consecutive ranges run by as many CTAs, whose fp32
// partial accumulators meet in a global workspace in split order (deterministic: the same bits
// on every run), the last split running the epilogue.
//
// CUTLASS's scheduler counts each tile's arrivals in a lock array that must read zero when a
// kernel starts, and never clears it: its adapter zeroes the workspace before every launch (one
// more launch per conv, and a memset node that breaks programmatic-launch chains in a graph).
// This scheduler leaves the locks as it found them instead: the split that runs the epilogue
// has waited for every other split of its tile, so it clears the tile's lock for the next kernel.
// And it puts the lock array at the workspace pointer it is given, the partials just below it,
// so kernels of any problem size can share one workspace: the locks stay at one place, and a
// kernel's partials, written before they are read, only ever land on other kernels' partials.
// Included after the CUTLASS GEMM kernel headers.
#pragma once

#include <cutlass/gemm/kernel/sm90_tile_scheduler_stream_k.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>

#include "gemm_conv1x1.h"  // SplitKArgs

namespace inception_fast {

// The tag that selects SplitKScheduler in GemmUniversal's fourth argument.
struct SplitKSchedulerTag {};

template <class TileShape, class ClusterShape>
struct SplitKScheduler : cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape> {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape>;
  using Base::Base;
  using Params = typename Base::Params;
  using WorkTileInfo = typename Base::WorkTileInfo;
  using BarrierType = typename Base::BarrierType;

  // Bytes of fp32 partials below the locks: one tile's accumulators per output tile in split-K
  // mode (the size the base scheduler's fixup places its locks after).
  CUTLASS_HOST_DEVICE static size_t partial_bytes(Params const& params) {
    return Params::get_reduction_workspace_size(params.units_per_problem_,
                                                cutlass::gemm::to_gemm_coord(TileShape{}),
                                                cutlass::sizeof_bits<float>::value);
  }

  // `workspace` is where the locks are: the partials go just below it (the caller's buffer holds
  // partial_bytes there).
  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape problem_shape, TileShape tile_shape, ClusterShape cluster_shape,
                                        cutlass::KernelHardwareInfo const& hw_info,
                                        typename Base::Arguments const& args, void* workspace,
                                        uint32_t epilogue_subtile = 1, uint32_t ktile_start_alignment_count = 1u) {
    Params params = Base::to_underlying_arguments(problem_shape, tile_shape, cluster_shape, hw_info, args, workspace,
                                                  epilogue_subtile, ktile_start_alignment_count);
    params.reduction_workspace_ = static_cast<uint8_t*>(workspace) - partial_bytes(params);
    return params;
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE static void fixup(Params const& params, WorkTileInfo const& work, FrgTensorC& accumulators,
                                   uint32_t num_barriers, uint32_t barrier_idx) {
    Base::fixup(params, work, accumulators, num_barriers, barrier_idx);
    // The last split has waited (in fixup) until every earlier split of its tile added its
    // partials: nothing else touches this warpgroup's lock in this kernel.
    if (Base::requires_fixup(params, work) && Base::compute_epilogue(work, params) &&
        threadIdx.x % cutlass::NumThreadsPerWarpGroup == 0) {
      BarrierType* locks = reinterpret_cast<BarrierType*>(static_cast<uint8_t*>(params.reduction_workspace_) +
                                                          partial_bytes(params));
      locks[Base::output_tile_index(params, work) * num_barriers + barrier_idx] = 0;
    }
  }
};

// A split-K kernel's scheduler arguments for `split`: split-K mode, partials added in split order.
template <class Kernel>
void set_split_k(typename Kernel::Arguments& arguments, const SplitKArgs& split) {
  using Scheduler = typename Kernel::TileScheduler;
  arguments.scheduler.splits = split.splits;
  arguments.scheduler.decomposition_mode = Scheduler::DecompositionMode::SplitK;
  arguments.scheduler.reduction_mode = Scheduler::ReductionMode::Deterministic;  // the same bits every run
}

// Why a prepared split-K kernel cannot run in `split`'s workspace, or nullptr. (More splits than
// a share of the SMs holds at once is slower, not stuck: a split waits only for splits of its
// tile that come before it in the scheduler's order, which CTAs take in that order.)
template <class Kernel>
const char* check_split_k(typename Kernel::Arguments const& arguments, typename Kernel::Params const& params,
                          const SplitKArgs& split) {
  const size_t partials = Kernel::TileScheduler::partial_bytes(params.scheduler);
  const size_t locks = Kernel::get_workspace_size(arguments) - partials;
  if (split.locks == nullptr || partials > size_t(split.partial_bytes) || locks > size_t(split.lock_bytes)) {
    return "the split-K workspace is too small for this problem: use fewer splits at this size";
  }
  return nullptr;
}

}  // namespace inception_fast

namespace cutlass::gemm::kernel::detail {

template <class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount>
struct TileSchedulerSelector<inception_fast::SplitKSchedulerTag, arch::Sm90, TileShape, ClusterShape,
                             SchedulerPipelineStageCount> {
  using Scheduler = inception_fast::SplitKScheduler<TileShape, ClusterShape>;
};

}  // namespace cutlass::gemm::kernel::detail
