"""The `triton-gemm` backend: the `triton` backend with every 1x1 conv that is a plain GEMM on the
CUTLASS sm90 op `torch.ops.inception_fast.cuda_gemm_conv1x1` (which problems, and how:
`gemm_routing`), and the k x k convs that fit it on the CUTLASS implicit-GEMM conv op
`cuda_conv_fprop` (where that is compiled in; INCEPTION_FAST_CUTLASS_KXK=0 keeps them on the
stage kernel), the rest of each stage on the Triton stage kernel in a second launch (none when
nothing is left). On an H100 at batch 32 and 256 the op runs Inception-v4's 1x1 convs
1.05-2.9x faster than the stage kernel; whether a split stage (two launches, the rest tiled on
its own) wins a block is for `auto` to time. Hopper (compute capability 9.0) only, fp16, bf16
and fp32 on TF32 (where `torch.backends.cudnn.allow_tf32` lets the `triton` backend use TF32:
the ops then read weights and activations rounded to TF32, as the stage kernel does), and only
where the CUDA extension was built with the CUTLASS headers; exact fp32, and buffers the op
cannot address, run as the `triton` backend. Slower than `triton` on a whole
network (the stem's narrow convs, batch 1), faster on most Inception blocks at batch 32 and 256:
`auto` weighs it per block by default.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch

from .. import packing as pk
from .. import side_streams
from ..graphs import capturing, outside_capture
from ..kernels.triton.launch_state import StageLaunchState
from . import cuda_backend, gemm_routing, launch_program, triton_backend

TRITON_KERNELS = True  # a first call compiles Triton kernels (see inception_fast.compile_ahead)


@dataclass
class SplitStage:
    """A stage as this backend runs it: the CUTLASS op launches, then `rest` (packed stage, tuning
    signature, launch state) on the stage kernel; `rest` is the whole stage when the op takes
    nothing, None when it takes everything."""

    launches: list  # gemm_routing.GemmLaunch / ConvLaunch
    rest: tuple | None
    sm_count: int = 0  # the GPU's SMs, which the launches share (gemm_routing.share_sms)
    small: dict = field(default_factory=dict)  # block input shape -> gemm_routing.stage_is_small
    table: gemm_routing.LaunchTable | None = None  # the launches for one op call (run_launches)

    def __post_init__(self):
        if self.launches and self.table is None:
            self.table = gemm_routing.launch_table(self.launches)


def availability(device=None) -> tuple[bool, str]:
    ok, reason = triton_backend.availability(device)
    if not ok:
        return ok, reason
    ok, why = gemm_routing.op_availability(device)
    if not ok:
        return False, why
    return True, f"{reason}; {why}"


def _usable_here(device) -> bool:
    ok, reason = availability(device)
    if not ok:
        cuda_backend._explain_once(f"backend 'triton-gemm' runs every stage on the stage kernel: {reason}")
    return ok


def split_stages(
    block, stages: list, in_channels: int, use_gemm: bool = True, kxk: bool = False, tf32: bool = False,
    sm_count: int = 0,
) -> list[SplitStage]:
    """Each `triton_backend` stage (packed, signature, launch state) split between the CUTLASS
    ops (the GEMM; with `kxk` the k x k conv too) and the stage kernel; `in_channels`: the block
    input's channels as the kernels get them; `tf32`: fp32 on TF32 tensor cores; `sm_count`: the
    GPU's SMs, which a stage's op launches share (side_streams.sm_shares; 0: each takes all)."""
    if not use_gemm:
        return [SplitStage([], stage) for stage in stages]
    plan = block.plan
    channels = {pk.BUF_INPUT: in_channels, pk.BUF_WORK: plan.work_channels, pk.BUF_OUTPUT: plan.out_channels}
    found = []
    for stage in stages:
        packed, _, state = stage
        # In TF32 the ops and the rest's stage kernel read one rounded copy of the stage's
        # weights, the `triton` backend's own (the rest shares the stage's weight table).
        tf32_weights = (state or StageLaunchState()).weights_for(packed, True) if tf32 else None
        split = gemm_routing.split_rows(packed, channels, kxk, tf32_weights)
        gemm_routing.share_sms(split.launches, sm_count)
        if not split.taken:
            found.append(SplitStage([], stage))
        elif split.rest is None:
            found.append(SplitStage(split.launches, None, sm_count))
        else:
            rest_state = StageLaunchState(tf32_weights=tf32_weights)
            rest = (split.rest, pk.stage_signature(split.rest), rest_state)
            found.append(SplitStage(split.launches, rest, sm_count))
    return found


def _split_block(block, x_kernel: torch.Tensor, stages: list, tf32: bool) -> list[SplitStage]:
    """The split, kept per block, device, dtype, TF32 mode and (with a global pool) input size;
    views of the packed tables (and, in TF32, one rounded copy of a stage's weights), made
    outside any CUDA graph capture."""
    size = tuple(x_kernel.shape[2:]) if pk.sized(block.plan) else None
    key = ("triton-gemm", x_kernel.device, x_kernel.dtype, tf32, size)
    found = block.backend_cache.get(key)
    if found is None:
        what = f"splitting {block.plan.label} between the GEMM op and the stage kernel"
        outside_capture(x_kernel.device, what)
        use_gemm = _usable_here(x_kernel.device)
        kxk = use_gemm and _kxk_usable(x_kernel.device)
        cuda = x_kernel.device.type == "cuda"
        sm_count = torch.cuda.get_device_properties(x_kernel.device).multi_processor_count if cuda else 0
        found = block.backend_cache[key] = split_stages(
            block, stages, x_kernel.shape[1], use_gemm, kxk, tf32, sm_count
        )
    return found


def _kxk_usable(device) -> bool:
    if os.environ.get("INCEPTION_FAST_CUTLASS_KXK", "1") == "0":
        return False
    ok, reason = gemm_routing.conv_op_status(device)
    if not ok:
        cuda_backend._explain_once(f"backend 'triton-gemm' keeps k x k convs on the stage kernel: {reason}")
    return ok


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A channels_last NCHW buffer as the op's [N, H, W, C] (the same memory)."""
    return t.permute(0, 2, 3, 1)


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    tf32 = triton_backend.uses_tf32(x)
    if not gemm_routing.computes(x.dtype, tf32):
        return triton_backend.run_block(block, x)
    stages = triton_backend._packed_block(block, x)
    x = triton_backend.to_kernel_layout(x, triton_backend._aligned(block.plan.in_channels))
    program_key = launch_program.key(x, tf32)
    if program_key is not None:  # a program recorded where every stage ran one launch after another
        out = launch_program.replay(block.backend_cache, program_key, x)
        if out is not None:
            return out
    x, work, out = triton_backend.kernel_buffers(block, x)
    if program_key is None:
        _launch_stages(block, x, work, out, stages, tf32)
    else:
        launch_program.run(block.backend_cache, program_key, (x, work, out),
                           functools.partial(_launch_stages, block, x, work, out, stages, tf32),
                           fresh_work=block.plan.work_channels > 0)
    return out


def _launch_stages(block, x, work, out, stages: list, tf32: bool) -> bool:
    """Each stage's launches on the block's buffers; whether every stage ran them one after
    another on the current stream (none side by side)."""
    # The op's tensor maps need 16-byte aligned buffers; a caller's unaligned view runs whole
    # on the stage kernel (the backend's own buffers are always aligned). So does a batch whose
    # buffers reach gemm_routing.MAX_ELEMENTS; the stage kernel has a wide-index variant.
    small = max(x.numel(), work.numel(), out.numel()) < gemm_routing.MAX_ELEMENTS
    if small and (torch.compiler.is_compiling() or x.data_ptr() % 16 == 0):
        splits = _split_block(block, x, stages, tf32)
    else:
        splits = [SplitStage([], stage) for stage in stages]
    buffers = {pk.BUF_INPUT: _nhwc(x), pk.BUF_WORK: _nhwc(work), pk.BUF_OUTPUT: _nhwc(out)}
    # A later stage reads what earlier ones wrote: stage by stage; within a stage the launches
    # are independent (disjoint channel slices), so they run side by side, sharing the SMs in a
    # small stage. Only inside a CUDA graph capture for a small stage: launched one by one, its
    # kernels take less GPU time than the host needs to issue them, and streams add host work
    # (Inception-v4 at batch 1 on an H100 without a graph: 7.9-9.4 ms a call side by side,
    # 5.2 one after another).
    capture = capturing()
    shape = tuple(x.shape)
    serial = True
    for split in splits:
        small = split.small.get(shape)
        if small is None:
            small = split.small[shape] = gemm_routing.stage_is_small(split.launches, buffers, split.sm_count)
        if not capture and (small or len(split.launches) + (split.rest is not None) < 2):
            # one after another, on every SM (a single launch has the SMs to itself either way)
            if split.rest is not None:
                stage, signature, state = split.rest
                triton_backend._run_stage(stage, state, x, work, out, signature)
            gemm_routing.run_launches(split.launches, buffers, split.table)
            continue
        serial = False
        launches = [functools.partial(launch.run, buffers, small) for launch in split.launches]
        if split.rest is not None:
            stage, signature, state = split.rest
            run_rest = functools.partial(triton_backend._run_stage, stage, state, x, work, out, signature)
            launches.insert(0, run_rest)
        side_streams.run_side_by_side(x.device, launches)
    return serial
