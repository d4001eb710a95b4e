"""The `cuda-gemm` backend: the `cuda` backend with every 1x1 conv that is a plain GEMM on the
CUTLASS sm90 op `torch.ops.inception_fast.cuda_gemm_conv1x1` (which problems, and how:
`gemm_routing`), the rest of each stage on the stage kernel in a second launch (none when
nothing is left). Hopper (compute capability 9.0) only, fp16 and bf16, and only where the
extension was built with the CUTLASS headers. Experimental: `auto` weighs it only where
INCEPTION_FAST_AUTO_EXPERIMENTS names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import packing as pk
from ..graphs import outside_capture
from . import cuda_backend, gemm_routing


@dataclass
class GemmStage:
    """A stage split between the GEMM op (`taken` rows, as `launches`) and the stage kernel
    (`rest`, None when the GEMM op takes every row)."""

    taken: list  # row indices of the stage the GEMM op computes
    launches: list  # GemmLaunch, in row order
    rest: cuda_backend._Stage | None
    table: gemm_routing.LaunchTable | None = None  # the launches for one op call (run_launches)

    def __post_init__(self):
        if self.launches and self.table is None:
            self.table = gemm_routing.launch_table(self.launches)


def split_stage(stage: cuda_backend._Stage, buffer_channels: dict) -> GemmStage:
    """The GEMM launches of a packed stage and the stage-kernel launch of what is left."""
    split = gemm_routing.split_rows(stage.packed, buffer_channels)
    if not split.taken:
        return GemmStage([], [], stage)
    rest = None
    if split.rest is not None:
        rest = cuda_backend._Stage(split.rest, [int(v) for r in split.rest.rows for v in r],
                                   [stage.destinations[p] for p in split.others])
    return GemmStage(split.taken, split.launches, rest)


def buffer_channels(block, packed: cuda_backend._PackedBlock) -> dict:
    """Channels of each buffer as the kernels see them (the block input's padded to 8)."""
    plan = block.plan
    return {pk.BUF_INPUT: packed.in_channels, pk.BUF_WORK: plan.work_channels,
            pk.BUF_OUTPUT: plan.out_channels}


def split_block(block, packed: cuda_backend._PackedBlock, use_gemm: bool = True) -> list[GemmStage]:
    """Every stage of a packed block split; with `use_gemm` off, every stage whole on the stage kernel."""
    if not use_gemm:
        return [GemmStage([], [], stage) for stage in packed.stages]
    channels = buffer_channels(block, packed)
    return [split_stage(stage, channels) for stage in packed.stages]


# --- availability -----------------------------------------------------------------------------


def availability(device=None) -> tuple[bool, str]:
    return gemm_routing.op_availability(device)


# --- running ----------------------------------------------------------------------------------


def _usable_here(device) -> bool:
    ok, reason = availability(device)
    if not ok:
        cuda_backend._explain_once(f"backend 'cuda-gemm' runs every stage on the stage kernel here: {reason}")
    return ok


def gemm_stages(block, packed: cuda_backend._PackedBlock, x: torch.Tensor) -> list[GemmStage]:
    """The split of each stage, kept per block, device, dtype and (with a global pool) input size.
    Views of the packed tables only, made outside any CUDA graph capture."""
    size = tuple(x.shape[2:]) if pk.sized(block.plan) else None
    key = ("cuda-gemm", x.device, x.dtype, size)
    stages = block.backend_cache.get(key)
    if stages is None:
        outside_capture(x.device, f"splitting {block.plan.label} between the GEMM op and the stage kernel")
        stages = block.backend_cache[key] = split_block(block, packed, _usable_here(x.device))
    return stages


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in cuda_backend.SUPPORTED_DTYPES:
        return cuda_backend.run_block(block, x)  # it says why, then runs PyTorch ops
    packed, inp_nhwc, work_nhwc, out_nhwc, out = cuda_backend.block_buffers(block, x)
    buffers = {pk.BUF_INPUT: inp_nhwc, pk.BUF_WORK: work_nhwc, pk.BUF_OUTPUT: out_nhwc}
    # A later stage reads what earlier ones wrote: stage by stage, on the current stream.
    for stage in gemm_stages(block, packed, x):
        gemm_routing.run_launches(stage.launches, buffers, stage.table)
        if stage.rest is not None:
            cuda_backend.run_stage(stage.rest, inp_nhwc, work_nhwc, out_nhwc)
    return out
