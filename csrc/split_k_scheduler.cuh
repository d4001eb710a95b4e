// Split-K for the CUTLASS sm90 kernels that leave most SMs idle (a conv at batch 1 is a dozen
// output tiles over 20+ k-blocks): CUTLASS's stream-K tile scheduler in its split-K mode, each
// output tile's K loop cut into `splits` consecutive ranges run by as many CTAs, the CTA of the
// last range running the epilogue.
//
// How the ranges' fp32 partials meet is this scheduler's own (its fixup):
// - every other range stores its partials in a slot of its own in a global workspace and counts
//   itself in the tile's lock; the last range waits for the count, then adds the slots in range
//   order. The same bits on every run, in one round of stores and loads (CUTLASS's deterministic
//   mode adds the ranges one after another, each waiting for the one before it: about 1.4 us
//   more per range on an H100 at batch 1, which cost more than the ranges saved).
// - the last range clears the lock as it takes it, so every kernel leaves the lock array zero:
//   CUTLASS's adapter zeroes its workspace before every launch instead (one more launch, and in
//   a graph a memset node that breaks a chain of programmatic launches).
// - the lock array is at the workspace pointer it is given, the slots just below it, so kernels
//   of any problem size share one workspace per stream: the locks stay at one place, and a
//   kernel's slots, written before they are read, only ever land on other kernels' slots.
// Included after the CUTLASS GEMM kernel headers.
#pragma once

#include <cutlass/barrier.h>
#include <cutlass/block_striped.h>
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
  static constexpr int kConsumerWarpGroups = 2;  // the cooperative kernel's, one lock each per tile
  static constexpr size_t kTileBytes = sizeof(float) * cute::size<0>(TileShape{}) * cute::size<1>(TileShape{});

  // Bytes of slots below the locks: one tile of fp32 partials per range but the last, per tile.
  CUTLASS_HOST_DEVICE static size_t partial_bytes(Params const& params) {
    return params.units_per_problem_ * (params.divmod_splits_.divisor - 1) * kTileBytes;
  }

  CUTLASS_HOST_DEVICE static size_t lock_bytes(Params const& params) {
    return params.units_per_problem_ * kConsumerWarpGroups * sizeof(BarrierType);
  }

  // `workspace` is where the locks are: the slots go just below it (the caller's buffer holds
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

  // CUTLASS's cooperative kernel asks this (with CUTLASS_ENABLE_GDC_FOR_SM90) only to let the next
  // kernel be scheduled after a CTA's last mainloop, and the stream-K base's own does not compile
  // (a const member bound to a non-const reference). kernel_entry lets the next kernel be
  // scheduled at its start already, so no tile needs to say it is the last.
  CUTLASS_DEVICE bool is_last_tile(WorkTileInfo const& /*work*/, uint32_t /*advance_count*/ = 1) const {
    return false;
  }

  // The range a work unit computes, 0 to splits - 1: the scheduler gives the first
  // `big_units_` ranges one k-block more than the others (q + 1, then q).
  CUTLASS_DEVICE static uint32_t range_index(Params const& params, WorkTileInfo const& work) {
    const uint32_t q = params.divmod_k_tiles_per_sk_unit_.divisor;
    const uint32_t big = params.big_units_;
    const uint32_t start = static_cast<uint32_t>(work.K_idx);
    return start < big * (q + 1) ? start / (q + 1) : big + (start - big * (q + 1)) / q;
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE static void fixup(Params const& params, WorkTileInfo const& work, FrgTensorC& accumulators,
                                   uint32_t num_barriers, uint32_t barrier_idx) {
    if (!Base::requires_fixup(params, work)) return;  // the whole K loop: nothing to add
    constexpr uint32_t kFirstBarrier = static_cast<uint32_t>(cutlass::arch::ReservedNamedBarriers::StreamkBarrier0);
    using Barriers = cutlass::NamedBarrierManager<cutlass::NumThreadsPerWarpGroup, kFirstBarrier, kConsumerWarpGroups>;
    using Fragment = cutlass::Array<typename FrgTensorC::value_type, cute::size(FrgTensorC{})>;
    using Striped = cutlass::BlockStripedReduce<Barriers::ThreadCount, Fragment>;
    const uint32_t ranges = params.divmod_splits_.divisor;
    const uint64_t tile = Base::output_tile_index(params, work);
    const int lock = static_cast<int>(tile * num_barriers + barrier_idx);
    const int thread = static_cast<int>(threadIdx.x % Barriers::ThreadCount);
    void* locks = static_cast<uint8_t*>(params.reduction_workspace_) + partial_bytes(params);
    // A warpgroup's accumulators of one range, striped over its threads.
    const auto slot = [&](uint32_t range) {
      return reinterpret_cast<Fragment*>(params.reduction_workspace_) +
             ((tile * (ranges - 1) + range) * num_barriers + barrier_idx) * Barriers::ThreadCount;
    };
    Fragment& mine = *reinterpret_cast<Fragment*>(accumulators.data());
    if (!Base::compute_epilogue(work, params)) {
      Striped::store(slot(range_index(params, work)), mine, thread);
      Barriers::arrive_inc(barrier_idx, locks, thread, lock, 1);
    } else {
      Barriers::wait_eq_reset(barrier_idx, locks, thread, lock, static_cast<BarrierType>(ranges - 1));
      for (uint32_t range = 0; range + 1 < ranges; ++range) Striped::load_add(mine, slot(range), thread);
    }
  }
};

// A split-K kernel's scheduler arguments for `split`: split-K mode. (CUTLASS cuts into no more
// ranges than SMs: on a share of fewer SMs than ranges, as many CTAs as ranges, so that the count,
// and so the bits, do not depend on the share.)
template <class Kernel>
void set_split_k(typename Kernel::Arguments& arguments, const SplitKArgs& split) {
  using Scheduler = typename Kernel::TileScheduler;
  arguments.scheduler.splits = split.splits;
  arguments.scheduler.decomposition_mode = Scheduler::DecompositionMode::SplitK;
  if (arguments.hw_info.sm_count < split.splits) arguments.hw_info.sm_count = split.splits;
}

// Why a prepared split-K kernel cannot run in `split`'s workspace, or nullptr. (More ranges than
// a share of the SMs holds at once is slower, not stuck: only the last range of a tile waits,
// for ranges that come before it in the scheduler's order, which CTAs take in that order.)
template <class Kernel>
const char* check_split_k(typename Kernel::Params const& params, const SplitKArgs& split) {
  using Scheduler = typename Kernel::TileScheduler;
  if (params.scheduler.divmod_splits_.divisor != uint32_t(split.splits)) {
    return "CUTLASS cut the K loop into another number of ranges than asked (more ranges than k-blocks)";
  }
  if (split.locks == nullptr || Scheduler::partial_bytes(params.scheduler) > size_t(split.partial_bytes) ||
      Scheduler::lock_bytes(params.scheduler) > size_t(split.lock_bytes)) {
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
