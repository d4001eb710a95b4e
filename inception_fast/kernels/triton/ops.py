"""The Triton kernels as `torch.library` custom ops (namespace `inception_fast`), so that
torch.compile(fullgraph=True) traces through them (as opaque mutating ops). `custom_op` rather
than `triton_op`: the latter imports Inductor (about 2 s) in every process that loads the
backend, compiling or not.

The backends call the routed names below (`triton_stage`, ...): while torch.compile traces, or
on tensors of a tracing mode (fake, functional), they call the custom op; on plain tensors they
launch the kernel directly. A custom op's first eager call imports torch._dynamo (about 3 s of
a process's first inference), and every call pays the dispatcher's autograd and view layers.
Registering the ops costs about a second on the GPU machines' torch as well, so it waits for
the first call that needs them: a trace (Dynamo runs the registration instead of tracing it,
see `_register`), or `register_all()`."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch.library import custom_op

from .compile_only import launcher
from .layout_kernel import _to_nhwc_padded_kernel, launch_to_nhwc_padded
from .stage_kernel import _stage_kernel
from .stage_launch import launch_stage_tensors


def _triton_stage(
    x: torch.Tensor,
    work: torch.Tensor,
    out: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    col_dst: torch.Tensor,
    col_flags: torch.Tensor,
    scratch: torch.Tensor,
    counts: torch.Tensor,
    num_tiles: int,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    k_parts: int,
    tf32: bool,
    has_conv: bool,
    has_pool: bool,
    has_residual: bool = False,
) -> None:
    """One stage of a block: x [N,Cin,H,W], work [N,Cw,H,W], out [N,Cout,OH,OW], all stored
    channels_last; the rest is a `packing.PackedStage`; num_tiles from `stage_launch.stage_tiles`;
    scratch / counts: split-K buffers from `stage_launch.split_k_buffers` (unused when k_parts == 1)."""
    launch_stage_tensors(
        launcher(_stage_kernel), num_tiles, x, work, out, problems, weights, bias, col_dst,
        col_flags, (block_m, block_n, block_k, num_warps, num_stages, k_parts),
        "tf32" if tf32 else "ieee", has_conv, has_pool, has_residual, scratch, counts,
    )


def _triton_tma_stage(
    x: torch.Tensor,
    work: torch.Tensor,
    out: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    col_dst: torch.Tensor,
    col_flags: torch.Tensor,
    num_programs: int,
    config: list[int],
    tf32: bool,
    has_gemm: bool,
    has_taps: bool,
    tap_mask: bool,
    has_residual: bool,
) -> None:
    """The stride-1 convs of a stage through tensor descriptors (`tma_conv_kernel`): buffers as for
    triton_stage; `problems` holds only the rows of a `tma_conv.TmaStage`; config: a
    `tma_conv.TmaConfig` as a list; num_programs from `tma_conv.num_programs`."""
    from .tma_conv import launch_tma_tensors  # experimental kernels: imported where used (their
    from .tma_conv_kernel import _tma_stage_kernel  # Triton functions take a first call ~0.1 s)

    launch_tma_tensors(
        launcher(_tma_stage_kernel), num_programs, x, work, out, problems, weights, bias, col_dst,
        col_flags, tuple(config), "tf32" if tf32 else "ieee", has_gemm, has_taps, tap_mask, has_residual,
    )


def _triton_block(
    x: torch.Tensor,
    work: torch.Tensor,
    out: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    col_dst: torch.Tensor,
    col_flags: torch.Tensor,
    schedule: torch.Tensor,
    deps: torch.Tensor,
    counters: torch.Tensor,
    scratch: torch.Tensor,
    counts: torch.Tensor,
    num_programs: int,
    num_tickets: int,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    k_parts: int,
    tf32: bool,
    has_conv: bool,
    has_pool: bool,
    has_residual: bool = False,
) -> None:
    """A whole block in one persistent launch: x [N,Cin,H,W], work [N,Cw,H,W], out
    [N,Cout,OH,OW], all stored channels_last; problems ... col_flags: every stage's packed table
    concatenated; schedule, deps, counters and num_tickets from `block_launch.block_schedule`
    (counters zero before the first launch; the kernel leaves them zero); scratch / counts:
    split-K buffers from `block_launch.split_k_buffers` (unused when k_parts == 1)."""
    from .block_kernel import _block_kernel  # experimental, imported where used (see above)
    from .block_launch import launch_block_tensors

    launch_block_tensors(
        launcher(_block_kernel), num_programs, num_tickets, x, work, out, problems, weights, bias,
        col_dst, col_flags, schedule, deps, counters, scratch, counts,
        (block_m, block_n, block_k, num_warps, num_stages, k_parts), "tf32" if tf32 else "ieee",
        has_conv, has_pool, has_residual,
    )


def _triton_to_nhwc_padded(x: torch.Tensor, out: torch.Tensor, round_tf32: bool = False) -> None:
    """x [N,C,H,W] (any strides) -> out [N,C_PAD,H,W] channels_last, extra channels zero;
    fp32 values rounded to TF32 when round_tf32."""
    launch_to_nhwc_padded(launcher(_to_nhwc_padded_kernel), x, out, round_tf32)


_LAUNCHES: dict = {}  # op name -> (launch, mutated argument names)
_registered: dict = {}  # op name -> its custom op, once registered


def _register(name: str) -> bool:
    """Register inception_fast::<name> once. Marked as Dynamo's `assume_constant_result` (the
    attribute its decorator sets, without importing Dynamo): a trace runs this for real and
    keeps its result as a constant, so the op exists before the trace looks it up."""
    if name not in _registered:
        launch, mutates = _LAUNCHES[name]
        op = custom_op(f"inception_fast::{name}", launch, mutates_args=mutates)
        # Mutating ops return nothing: their fake (meta) implementation has nothing to compute.
        op.register_fake(lambda *args, **kwargs: None)
        _registered[name] = op
    return True


_register._dynamo_marked_constant = True


def register_all() -> None:
    """Every routed op registered, for callers of torch.ops.inception_fast.triton_* directly."""
    for name in _LAUNCHES:
        _register(name)


def _routed(launch: Callable[..., None], mutates: set[str]) -> Callable[..., None]:
    """The callable the backends use for `launch`: the custom op inception_fast::<name>
    (mutating `mutates`) where tracing needs it, else `launch` itself."""
    name = launch.__name__.lstrip("_")
    _LAUNCHES[name] = (launch, mutates)

    def call(x: torch.Tensor, *args) -> None:
        if not torch.compiler.is_compiling() and type(x) is torch.Tensor:
            launch(x, *args)
        else:
            _register(name)
            getattr(torch.ops.inception_fast, name)(x, *args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = launch.__doc__
    return call


triton_stage = _routed(_triton_stage, {"work", "out", "scratch", "counts"})
triton_tma_stage = _routed(_triton_tma_stage, {"work", "out"})
triton_block = _routed(_triton_block, {"work", "out", "counters", "scratch", "counts"})
triton_to_nhwc_padded = _routed(_triton_to_nhwc_padded, {"out"})

if "torch._dynamo" in sys.modules:  # a process that compiles: register now, outside any trace
    register_all()
