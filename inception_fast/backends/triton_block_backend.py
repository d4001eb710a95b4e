"""The `triton-block` backend: every block is ONE launch of the persistent Triton block kernel
(kernels/triton/block_kernel.py), which runs all the block's stages, a tile of a later stage
waiting only for the tiles of earlier stages it reads. Small batches are bound by launches and
by stage boundaries where most SMs idle; one launch per block removes both. The per-stage
`triton` backend stays, and backend="auto" picks between them per block and batch by timing.

Inputs, layouts, dtypes and TF32 rounding are those of the `triton` backend, whose helpers this
module shares; the tiles are the stage kernel's, without split-K.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .. import packing as pk
from ..graphs import capturing, outside_capture
from ..kernels.triton import ops as triton_ops
from ..kernels.triton import tuning
from ..kernels.triton.block_launch import block_schedule, programs_per_sm, split_k_buffers
from ..kernels.triton.launch_state import StageLaunchState
from ..kernels.triton.stage_launch import stage_kinds
from ..plan import BlockPlan, op_destinations
from . import precision_key
from .triton_backend import (
    SUPPORTED_DTYPES,
    availability,  # noqa: F401 - the same cards and Triton as the `triton` backend
    kernel_buffers,
    padded_channels,
    uses_tf32,
)

TRITON_KERNELS = True  # a first call compiles Triton kernels (see inception_fast.compile_ahead)

# At most this many programs per launch (None: as the config says). Tests set it to show that
# a handful of resident programs still finish a block.
GRID_LIMIT: int | None = None
_sm_counts: dict = {}


@dataclass
class PackedBlock:
    table: pk.PackedStage  # every stage's problems, concatenated in stage order
    deps: list  # per problem: (producer index, whole) pairs, see `problem_dependencies`
    signature: str  # the stages' signatures: tile choices are keyed by it
    kinds: tuple  # (has conv, has pool, has residual) over the whole block
    launches: dict = field(default_factory=dict)  # per shape and config: schedule; and per stream: counters
    # The config chosen per shape and the TF32 weights of `table` (its split-K buffers are in
    # `launches`, with the schedule they belong to).
    state: StageLaunchState = field(default_factory=StageLaunchState)


def _overlap(a, b) -> bool:
    return a.buffer == b.buffer and a.start < b.stop and b.start < a.stop


def problem_dependencies(plan: BlockPlan) -> list[list[tuple[int, bool]]]:
    """For each op of the plan (in `plan.ops` order, which is the packed problems' order), the
    ops of earlier stages it must wait for: (index, whole). whole=False: it reads what that op
    writes, through its window (a tile waits for the producer tiles its window covers);
    whole=True: it also overwrites what that op reads or writes, so it waits for all of it."""
    staged = [(s, op) for s, stage in enumerate(plan.stages) for op in stage]
    deps = []
    for s, op in staged:
        mine = []
        writes = op_destinations(op)
        for q, (sq, producer) in enumerate(staged):
            if sq >= s:
                break
            produced = op_destinations(producer)
            reads = any(_overlap(op.src, d) for d in produced)
            clobbers = any(_overlap(d, e) for d in writes for e in [producer.src, *produced])
            if reads or clobbers:
                mine.append((q, clobbers))
        deps.append(mine)
    return deps


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the triton-block backend runs fp16, bf16 and fp32, got {x.dtype}; use backend='torch'"
        )


def pack_whole_block(block, device, dtype, padded_in_channels=None, height=None, width=None) -> PackedBlock:
    """Pack every stage (`packing.pack_block`, which refuses what the kernels cannot run) and
    concatenate them into one table: weight and column offsets shift by what came before."""
    stages = pk.pack_block(block, device, dtype, padded_in_channels, height, width)
    rows, w_off, col_off = [], 0, 0
    for stage in stages:
        for row in stage.rows:
            row = list(row)
            if row[pk.W_OFF] >= 0:
                row[pk.W_OFF] += w_off
            row[pk.COL_OFF] += col_off
            rows.append(row)
        w_off += stage.weights.numel()
        col_off += stage.bias.numel()
    table = pk.PackedStage(
        problems=torch.tensor(rows, dtype=torch.int64, device=device),
        rows=rows,
        weights=torch.cat([s.weights for s in stages]),
        bias=torch.cat([s.bias for s in stages]),
        col_dst=torch.cat([s.col_dst for s in stages]),
        col_flags=torch.cat([s.col_flags for s in stages]),
        residual=any(s.residual for s in stages),
    )
    signature = "|".join(pk.stage_signature(s) for s in stages)
    return PackedBlock(table, problem_dependencies(block.plan), signature, stage_kinds(table))


def _packed(block, x: torch.Tensor) -> PackedBlock:
    size = tuple(x.shape[2:]) if pk.sized(block.plan) else None
    key = ("triton-block", x.device, x.dtype, size)
    packed = block.backend_cache.get(key)
    if packed is None:
        packed = block.backend_cache[key] = pack_whole_block(
            block, x.device, x.dtype, padded_channels(block.plan), *(size or (None, None))
        )
    return packed


def _sm_count(device) -> int:
    count = _sm_counts.get(device)
    if count is None:
        count = _sm_counts[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return count


class _Launch(NamedTuple):
    schedule: torch.Tensor
    deps: torch.Tensor
    counters: torch.Tensor
    scratch: torch.Tensor
    counts: torch.Tensor
    tickets: int


def _device_ints(values: list, device) -> torch.Tensor:
    """`values` as an int32 tensor on `device`: a host-to-device copy, which a CUDA graph capture
    cannot hold; the first call at a shape makes it, outside any capture."""
    outside_capture(device, "backend 'triton-block'")
    return torch.tensor(values, dtype=torch.int32, device=device)


def _launch_buffers(packed: PackedBlock, n, h, w, config, x) -> _Launch:
    """Schedule, counters and split-K buffers per shape and config, made once and kept: the
    kernel leaves its counters at zero, so later launches and CUDA-graph replays reuse them.
    The schedule is read-only and shared; launches on two streams may run at once (threads
    sharing a model, or a graph captured on another stream than its warm-up): counters and
    scratch per stream, made with device-side fills that a capture can hold."""
    stream = None
    if x.is_cuda and not torch.compiler.is_compiling():
        stream = torch.cuda.current_stream(x.device).cuda_stream
    key = (n, h, w, config, x.device)
    buffers = packed.launches.get((*key, stream))
    if buffers is not None:
        return buffers
    shared = packed.launches.get(key)
    if shared is None:
        plan = block_schedule(packed.table.rows, packed.deps, n, h, w, config[0], config[1], config[5])
        shared = packed.launches[key] = (plan, _device_ints(plan.schedule, x.device),
                                         _device_ints(plan.deps, x.device))
    plan, schedule, deps = shared
    scratch, counts = split_k_buffers(plan.slots, config, x.device)
    if scratch is None:  # never touched without split-K; two tensors: mutated args must not alias
        scratch = torch.empty(1, dtype=torch.float32, device=x.device)
        counts = torch.empty(1, dtype=torch.int32, device=x.device)
    buffers = _Launch(
        schedule, deps, torch.zeros(plan.counters, dtype=torch.int32, device=x.device),
        scratch, counts, plan.tickets,
    )
    # Made inside a capture, they are zeroed only when that graph replays: that graph's alone.
    if not (x.is_cuda and capturing()):
        packed.launches[(*key, stream)] = buffers
    return buffers


def num_programs(tickets: int, config, x: torch.Tensor) -> int:
    """Programs of a launch: one or two per SM (`programs_per_sm`), never more than tickets,
    nor more than GRID_LIMIT where that is set."""
    programs = min(tickets, programs_per_sm(config, x.element_size()) * _sm_count(x.device))
    return max(1, min(programs, GRID_LIMIT) if GRID_LIMIT else programs)


def _run(packed: PackedBlock, x, work, out) -> None:
    n, _, h, w = x.shape
    tf32 = uses_tf32(x)
    table = packed.table
    def launch(config):
        b = _launch_buffers(packed, n, h, w, config, x)
        triton_ops.triton_block(
            x, work, out, table.problems, packed.state.weights_for(table, tf32), table.bias, table.col_dst,
            table.col_flags, b.schedule, b.deps, b.counters, b.scratch, b.counts,
            num_programs(b.tickets, config, x), b.tickets, *config, tf32, *packed.kinds,
        )

    # The chosen config per shape is kept with the table: no key building on the hot path.
    shape = (n, h, w, x.dtype, tf32)
    config = packed.state.configs.get(shape)
    if config is None:
        # The stage kernel's candidates: the same tiles and split-K parts, BLOCK_K from the
        # narrowest conv of the whole block.
        convs = [row[pk.CIN] for row in table.rows if row[pk.KIND] == pk.CONV]
        configs = tuning.candidates(
            min(convs, default=64), tuning.batch_bucket(n), packed.kinds[0], x.element_size()
        )
        fallback = tuning.default_config(
            configs, lambda bm, bn: block_schedule(table.rows, packed.deps, n, h, w, bm, bn).tickets,
            _sm_count(x.device),
        )
        name = torch.cuda.get_device_name(x.device).replace(" ", "_")
        # "block:" keeps these choices apart from the stage kernel's.
        key = f"block:{packed.signature}/{h}x{w}/b{tuning.batch_bucket(n)}/{precision_key(x)}/{name}"
        config = tuning.choose(key, launch, configs, fallback, x.device)
        if tuning.can_time():  # a config chosen untimed (tracing, capture, compile-only) is not kept
            packed.state.configs[shape] = config
    launch(config)


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    _check_dtype(x)
    packed = _packed(block, x)
    x, work, out = kernel_buffers(block, x)
    _run(packed, x, work, out)
    return out
