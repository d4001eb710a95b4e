"""The `cuda` backend: each stage of a block plan is one launch of the C++/CUDA stage kernel
(csrc/conv_stage.cuh) on the packed stage format of `inception_fast.packing`.

Activations stay NHWC (channels_last) from block to block. The kernel reads channels in
groups of 8 (16-byte copies), so an input whose channel count is not a multiple of 8 (the
3-channel image) is zero-padded to the next multiple, with the weights padded to match
(`packing.pack_block(..., padded_in_channels)`).
The classifier head is two plans like any block: a whole-image average pool, then the Linear as
a 1x1 conv.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import extension
from .. import packing as pk
from . import torch_backend

logger = logging.getLogger("inception_fast")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
CHANNEL_GROUP = 8  # the kernel copies 8 channels (16 bytes) at a time
_explained: set = set()


def _explain_once(message: str) -> None:
    if message not in _explained:
        _explained.add(message)
        logger.warning("inception_fast: %s", message)


def availability(device=None) -> tuple[bool, str]:
    """(usable, reason). Loads (or builds) the extension on first call; says once why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return False, f"the CUDA extension runs on CUDA devices, not {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"the stage kernel needs compute capability 8.0 or newer, {device} has {major}.{minor}"
    ok, reason = extension.status()
    if not ok:
        _explain_once(f"the CUDA extension is not available, so backend 'cuda' is off: {reason}")
    return ok, reason


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Stage:
    packed: pk.PackedStage
    problems: list  # flattened rows, host-side: the launch schedule needs no device sync
    destinations: list  # per problem: the set of pk.BUF_WORK / pk.BUF_OUTPUT its columns write


@dataclass
class _PackedBlock:
    stages: list
    in_channels: int  # after padding to a multiple of 8
    checked_sizes: set = field(default_factory=set)


def _check_destinations(plan, rows, col_dst: list, col_flags: list) -> list:
    """Each problem's destination buffers, after checking every column lands inside one."""
    limit = {pk.BUF_OUTPUT: plan.out_channels, pk.BUF_WORK: plan.work_channels}
    destinations = []
    for row in rows:
        dsts = set()
        for j in range(row[pk.COL_OFF], row[pk.COL_OFF] + row[pk.COLS]):
            buf = pk.BUF_OUTPUT if col_flags[j] & pk.FLAG_TO_OUTPUT else pk.BUF_WORK
            if not 0 <= col_dst[j] < limit[buf]:
                raise ValueError(
                    f"{plan.name}: column {j} goes to channel {col_dst[j]} of a {limit[buf]}-channel buffer"
                )
            dsts.add(buf)
        destinations.append(dsts)
    return destinations


def _pack(block, device, dtype, size) -> _PackedBlock:
    plan = block.plan
    in_channels = _round_up(plan.in_channels, CHANNEL_GROUP)
    padded = in_channels if in_channels != plan.in_channels else None
    stages = []
    for stage in pk.pack_block(block, device, dtype, padded, *(size or (None, None))):
        col_dst, col_flags = stage.col_dst.tolist(), stage.col_flags.tolist()
        problems = [int(v) for row in stage.rows for v in row]
        stages.append(_Stage(stage, problems, _check_destinations(plan, stage.rows, col_dst, col_flags)))
    return _PackedBlock(stages, in_channels)


def packed_block(block, device, dtype, size=None) -> _PackedBlock:
    """The block's stages packed for this backend, cached in `block.backend_cache` (per input
    size where the plan has a global pool)."""
    size = size if pk.sized(block.plan) else None
    key = ("cuda", torch.device(device), dtype, size)
    packed = block.backend_cache.get(key)
    if packed is None:
        packed = block.backend_cache[key] = _pack(block, device, dtype, size)
    return packed


def _check_sizes(block, packed: _PackedBlock, h: int, w: int, oh: int, ow: int) -> None:
    """Every problem's output size must equal the size of each buffer it writes (the kernel
    indexes destinations by the problem's output pixel)."""
    if (h, w) in packed.checked_sizes:
        return
    size = {pk.BUF_WORK: (h, w), pk.BUF_OUTPUT: (oh, ow)}
    for stage in packed.stages:
        for p, dsts in enumerate(stage.destinations):
            got = stage.packed.output_hw(p, h, w)
            for buf in dsts:
                if got != size[buf]:
                    raise ValueError(
                        f"{block.plan.name}: on a {h}x{w} input a problem makes {got} pixels for a "
                        f"{size[buf]} destination"
                    )
    packed.checked_sizes.add((h, w))


def _misaligned(x: torch.Tensor) -> bool:
    """The kernel copies 16 bytes at a time. Under torch.compile there is no data pointer to
    look at; the op itself checks alignment when it runs."""
    return not torch.compiler.is_compiling() and x.data_ptr() % 16 != 0


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in SUPPORTED_DTYPES:
        _explain_once(f"backend 'cuda' runs float16 and bfloat16; {x.dtype} blocks run on PyTorch ops")
        return torch_backend.run_block(block, x)
    packed, inp_nhwc, work_nhwc, out_nhwc, out = block_buffers(block, x)
    for s in packed.stages:
        run_stage(s, inp_nhwc, work_nhwc, out_nhwc)
    return out


def block_buffers(block, x: torch.Tensor) -> tuple:
    """(packed block, input, work, output as NHWC views, the output to return) of one call on a
    float16 or bfloat16 input: the buffers every stage kernel launch of the call shares."""
    if not torch.compiler.is_compiling():
        extension.load()
    plan = block.plan
    n, c, h, w = x.shape
    oh, ow = block.output_hw(h, w)
    packed = packed_block(block, x.device, x.dtype, (h, w))
    _check_sizes(block, packed, h, w, oh, ow)
    like = {"dtype": x.dtype, "device": x.device, "memory_format": torch.channels_last}
    if c != packed.in_channels:  # one pad kernel writes the zero-padded NHWC copy
        x = F.pad(x.permute(0, 2, 3, 1), (0, packed.in_channels - c)).contiguous().permute(0, 3, 1, 2)
    elif not x.is_contiguous(memory_format=torch.channels_last) or _misaligned(x):
        x = x.clone(memory_format=torch.channels_last)  # a fresh, aligned NHWC copy
    out = torch.empty((n, plan.out_channels, oh, ow), **like)
    work = torch.empty((n, plan.work_channels, h, w), **like) if plan.work_channels else x.new_empty(0)
    if os.environ.get("INCEPTION_FAST_POISON") == "1":  # tests: channels never written show as NaN
        out.fill_(float("nan"))
        work.fill_(float("nan"))
    inp_nhwc, out_nhwc = x.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)
    work_nhwc = work.permute(0, 2, 3, 1) if plan.work_channels else work
    return packed, inp_nhwc, work_nhwc, out_nhwc, out


def run_stage(stage: _Stage, inp_nhwc, work_nhwc, out_nhwc) -> None:
    """One launch of the stage kernel on a packed stage (or a part of one)."""
    p = stage.packed
    torch.ops.inception_fast.cuda_conv_stage.default(
        inp_nhwc, work_nhwc, out_nhwc, stage.problems, p.weights, p.bias, p.col_dst, p.col_flags
    )
