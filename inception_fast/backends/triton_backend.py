"""The `triton` backend: every stage of every block is one launch of the grouped Triton stage
kernel; activations stay NHWC (channels_last) from the input conversion to the logits.

fp16 and bf16 run on the tensor cores with fp32 accumulation. fp32 follows
`torch.backends.cudnn.allow_tf32` (PyTorch's own default for convolutions, True): TF32 dots
when it is set, full-precision fp32 dots when it is not. TF32 rounds like cuDNN, to nearest:
the weights once on the host, the network input in the layout kernel, and every activation as
the kernels store it; the tensor cores alone would truncate.

INCEPTION_FAST_TMA (an experiment, off by default): =1 runs every stage whose problems are all
stride-1 convs on the TMA kernel (`kernels/triton/tma_conv_kernel.py`) instead of the stage kernel;
=split also runs the stride-1 convs of mixed stages there, and the stage's other problems
(pools, strided convs) in a second launch of the stage kernel. fp16, bf16 and TF32 only.
INCEPTION_FAST_TMA_CONFIG=block_m,block_n,block_k,warps,stages[,box_w[,per_sm[,flatten]]]
replaces its default tile config.
"""

from __future__ import annotations

import math
import os

import torch

from .. import packing as pk
from ..graphs import capturing
from ..kernels.triton import ops as triton_ops
from ..kernels.triton import tma_conv, tuning
from ..kernels.triton.launch_state import StageLaunchState
from ..kernels.triton.stage_launch import split_k_buffers, stage_kinds, stage_tiles
from . import precision_key

TRITON_KERNELS = True  # a first call compiles Triton kernels (see inception_fast.compile_ahead)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ALIGN = 8  # the kernels move 8 channels (16 bytes) at a time; the 3-channel input is padded


def availability(device=None) -> tuple[bool, str]:
    import triton

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (the kernels run on CPU only under TRITON_INTERPRET=1)"
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        return False, f"the Triton kernels run on CUDA devices, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"needs compute capability 8.0 or newer, this card has {major}.{minor}"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name(device)}"


def _alloc(shape, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)
    if os.environ.get("INCEPTION_FAST_POISON") == "1":  # tests: unwritten channels show as NaN
        out.fill_(float("nan"))
    return out


def _no_work(module, x: torch.Tensor) -> torch.Tensor:
    """A stand-in work buffer for stages without intermediates: never read or written, but
    distinct from the output, because two mutated op arguments must not alias. Made once and
    kept on the module: a fresh one per call would be a buffer that a traced graph creates,
    mutates and never reads, which Inductor's scheduler drops and then fails on."""
    key = ("no-work", x.device, x.dtype)
    buffer = module.backend_cache.get(key)
    if buffer is None:
        buffer = module.backend_cache[key] = torch.empty(
            (1, ALIGN, 1, 1), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
        )
    return buffer


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the triton backend runs fp16, bf16 and fp32, got {x.dtype}; use backend='torch'")


def uses_tf32(x: torch.Tensor) -> bool:
    """fp32 dots run on TF32 when PyTorch's convolutions would (cudnn.allow_tf32)."""
    return x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def to_kernel_layout(x: torch.Tensor, channels: int) -> torch.Tensor:
    """NCHW input in any memory format -> channels_last with `channels` (>= C) channels. The
    padded copy (the network input) is also rounded to TF32 in TF32 mode; an aligned input
    passes as it is, so a block called on its own truncates it in its first convs."""
    if x.shape[1] == channels:
        return x.contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        (x.shape[0], channels, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
        memory_format=torch.channels_last,
    )
    triton_ops.triton_to_nhwc_padded(x, out, uses_tf32(x))
    return out


def padded_channels(plan) -> int | None:
    """The block's input channels padded to the kernels' alignment (None: already aligned)."""
    channels = _aligned(plan.in_channels)
    return channels if channels != plan.in_channels else None


def _packed_block(block, x: torch.Tensor) -> list[tuple[pk.PackedStage, str, StageLaunchState]]:
    """Per stage: the packed table, its signature (the tuning key) and its launch state."""
    size = tuple(x.shape[2:]) if pk.sized(block.plan) else None
    key = ("triton", x.device, x.dtype, size)
    stages = block.backend_cache.get(key)
    if stages is None:
        padded = padded_channels(block.plan)
        stages = pk.pack_block(block, x.device, x.dtype, padded, *(size or (None, None)))
        stages = block.backend_cache[key] = [
            (stage, pk.stage_signature(stage), StageLaunchState()) for stage in stages
        ]
    return stages


def _aligned(channels: int) -> int:
    return -(-channels // ALIGN) * ALIGN


def _run_stage(stage, state: StageLaunchState, x, work, out, key: str):
    n, _, h, w = x.shape
    tf32 = uses_tf32(x)
    kinds = stage_kinds(stage)

    def launch(config):
        tiles = state.tiles.get((n, h, w, config))
        if tiles is None:
            tiles = stage_tiles(stage, n, h, w, config[0], config[1], config[5])
            state.tiles[n, h, w, config] = tiles
        scratch, counts = _split_k_buffers(stage, state, n, h, w, config, x)
        triton_ops.triton_stage(
            x, work, out, stage.problems, state.weights_for(stage, tf32), stage.bias, stage.col_dst,
            stage.col_flags, scratch, counts, tiles, *config, tf32, *kinds,
        )

    launch(stage_config(stage, state, x, key, launch))


def stage_config(stage, state: StageLaunchState, x: torch.Tensor, key: str, launch) -> tuple:
    """The stage kernel's config for `stage` on inputs shaped like `x`: cached, shipped, from
    the nearest batch bucket or a heuristic, timed with `launch(config)` only where tuning is
    enabled (`tuning.choose`). Kept in the stage's `state` per shape: no key building on the
    hot path."""
    n, _, h, w = x.shape
    shape = (n, h, w, x.dtype, uses_tf32(x))
    config = state.configs.get(shape)
    if config is None:
        convs = [row[pk.CIN] for row in stage.rows if row[pk.KIND] == pk.CONV]
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        bucket = tuning.batch_bucket(n)

        def tiles(bm, bn):
            return stage_tiles(stage, n, h, w, bm, bn)

        if convs:
            configs = tuning.candidates(min(convs), bucket, True, x.element_size())
            fallback = tuning.default_config(configs, tiles, sms)
        else:  # pools alone: tiles shaped for loads (tuning.pool_config)
            channels = math.gcd(*(row[pk.COLS] for row in stage.rows))
            configs = tuning.pool_candidates(channels, bucket, x.element_size())
            fallback = tuning.pool_config(channels, tiles, sms)
        name = torch.cuda.get_device_name(x.device).replace(" ", "_")
        full_key = f"{key}/{h}x{w}/b{bucket}/{precision_key(x)}/{name}"
        config = tuning.choose(full_key, launch, configs, fallback, x.device)
        if tuning.can_time():  # a config chosen untimed (tracing, capture, compile-only) is not kept
            state.configs[shape] = config
    return config


def _split_k_buffers(stage, state: StageLaunchState, n, h, w, config, x):
    """Split-K scratch per stage, shape, config and stream, allocated once and kept: the kernel
    leaves its counters at zero, so later launches and CUDA-graph replays reuse it. Launches on
    two streams may run at once (threads sharing a model), so each stream has its own."""
    stream = None
    if config[5] > 1 and x.is_cuda and not torch.compiler.is_compiling():  # unsplit: never touched
        stream = torch.cuda.current_stream(x.device).cuda_stream
    key = (n, h, w, config, x.device, stream)
    buffers = state.scratch.get(key)
    if buffers is None:
        scratch, counts = split_k_buffers(stage, n, h, w, config, x.device)
        if scratch is None:  # never touched without split-K; two tensors: mutated args must not alias
            scratch = torch.empty(1, dtype=torch.float32, device=x.device)
            counts = torch.empty(1, dtype=torch.int32, device=x.device)
        buffers = (scratch, counts)
        # Made inside a capture, they are zeroed only when that graph replays: that graph's alone.
        if not (x.is_cuda and capturing()):
            state.scratch[key] = buffers
    return buffers


def _tma_stages(block, x: torch.Tensor, stages, mode: str) -> list:
    """The TMA split of each stage (None: the stage kernel runs it all), kept per block, dtype,
    precision and mode."""
    tf32 = uses_tf32(x)
    size = tuple(x.shape[2:]) if pk.sized(block.plan) else None
    key = ("triton-tma", mode, x.device, x.dtype, tf32, size)
    plans = block.backend_cache.get(key)
    if plans is None:
        plans = [None] * len(stages)
        if tma_conv.dtype_reason(x.dtype, tf32) is None:
            plans = [tma_conv.plan_stage(stage, allow_split=mode == "split") for stage, _, _ in stages]
            for plan, (stage, _, state) in zip(plans, stages):
                if plan is not None and plan.rest is not None and tf32:
                    plan.rest_state.tf32_weights = state.weights_for(stage, True)  # one rounded copy
        block.backend_cache[key] = plans
    return plans


def _run_tma_stage(tma, state: StageLaunchState, x, work, out, signature: str) -> None:
    """The TMA rows of a stage on the TMA kernel, then its other rows (if any) on the stage
    kernel; buffers a descriptor cannot address send the whole stage to the stage kernel.
    `state`: the whole stage's launch state."""
    # (traced, the buffers have no addresses; the backend allocates them aligned)
    if not torch.compiler.is_compiling() and tma_conv.buffers_reason(x, work, out) is not None:
        _run_stage(tma.stage, state, x, work, out, signature)
        return
    n, _, h, w = x.shape
    tf32 = uses_tf32(x)
    shape = (n, h, w, x.dtype, tf32)
    config = tma.configs.get(shape)
    if config is None:
        config = tma_conv.default_config(tma, x.element_size())
        tma_conv.check_config(config)
        if not torch.compiler.is_compiling():
            tma.configs[shape] = config
    triton_ops.triton_tma_stage(
        x, work, out, tma.problems, state.weights_for(tma.stage, tf32), tma.stage.bias, tma.stage.col_dst,
        tma.stage.col_flags, tma_conv.num_programs(tma, x, config), list(config), tf32,
        *tma.kernel_flags(config),
    )
    if tma.rest is not None:
        _run_stage(tma.rest, tma.rest_state, x, work, out, tma.rest_signature)


def kernel_buffers(block, x: torch.Tensor) -> tuple:
    """(input in the kernels' layout, work buffer, output buffer) of one block call: the
    Triton kernels' buffers, NaN-poisoned in tests."""
    plan = block.plan
    x = to_kernel_layout(x, _aligned(plan.in_channels))
    n, _, h, w = x.shape
    oh, ow = block.output_hw(h, w)
    out = _alloc((n, plan.out_channels, oh, ow), x)
    work = _alloc((n, plan.work_channels, h, w), x) if plan.work_channels else _no_work(block, x)
    return x, work, out


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    return run_stages(block, x, tma_conv.mode())


def run_stages(block, x: torch.Tensor, tma_mode: str | None) -> torch.Tensor:
    """The block's stages; with `tma_mode` ("1" or "split", see the module docstring) the
    stride-1 convs it names run on the TMA kernel (the `triton-tma` backend passes "split")."""
    _check_dtype(x)
    stages = _packed_block(block, x)
    x, work, out = kernel_buffers(block, x)
    tma_stages = _tma_stages(block, x, stages, tma_mode) if tma_mode else [None] * len(stages)
    for (stage, signature, state), tma in zip(stages, tma_stages):
        if tma is None:
            _run_stage(stage, state, x, work, out, signature)
        else:
            _run_tma_stage(tma, state, x, work, out, signature)
    return out
