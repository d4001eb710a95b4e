"""A block's launches at one input shape, issued from C++ in one call (the extension's
`torch.classes.inception_fast.LaunchProgram`, csrc/launch_program.cpp).

Without a CUDA graph, a call at a small batch is bound by the host: per launch, the Python of
the backend, an op dispatch, the CUTLASS op's checks and TMA descriptors, or Triton's launcher.
A backend that runs a block's launches one after another on the current stream (`triton-gemm`
at small batches) records them on one call (`launch_record`) and from then on hands the block's
buffers to the program, which issues the same launches in the same order: each CUTLASS launch
prepared once and issued again while its buffers keep their addresses, each Triton launch with
its recorded parameters and the buffers' addresses.

A program belongs to one input shape, dtype, device, stream, alignment of the input and the
programmatic-launch setting (`key`). It is recorded on the second call with that key (the first
may tune, compile or allocate scratch) and only where every launch of the call can be replayed:
launched one after another (no stage side by side), every Triton launch through the relauncher
with parameters of the kinds the program passes, and no Triton kernel that needs scratch memory.
Otherwise the block keeps running launch by launch, and `refused` says why.

INCEPTION_FAST_PROGRAMS=0 turns programs off (read at each call).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import torch

from ..kernels import launch_record, programmatic_launch
from ..kernels.triton import compile_only
from . import gemm_routing

ENV = "INCEPTION_FAST_PROGRAMS"
KEY = "launch-program"  # the first item of every program key in a block's backend cache
RECORD_AT_CALL = 2  # the call with a key that is recorded: the first may tune, compile, allocate
# Program slots a block keeps (one per input shape, stream, ...): a caller cycling through new
# streams or shapes gets no more; their calls launch one by one.
MAX_SLOTS = 64
# How a Triton parameter's value is given, as csrc/launch_program.cpp reads it (ParamKind).
PARAM_BUFFER, PARAM_ADDRESS, PARAM_INT32, PARAM_INT64, PARAM_FLOAT32 = range(5)
_INT32_TYPES = ("i1", "i8", "i16", "i32", "u1", "u8", "u16", "u32")  # Triton passes these as 32 bits
_INT64_TYPES = ("i64", "u64")
_FLOAT32_TYPES = ("fp32", "f32")


class Unreplayable(Exception):
    """A recorded launch the program cannot issue; the message says why."""


def enabled() -> bool:
    setting = os.environ.get(ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV}={setting!r}: use 1 (replay a block's launches from C++, the default) or 0")
    return setting == "1"


def key(x: torch.Tensor, *extra) -> tuple | None:
    """The program key of a block call on `x` (the block's input in the kernels' layout), or None
    where no program applies: programs off, a CPU or traced tensor, a CUDA graph capture (whose
    own launches side by side the graph keeps), a compile-only pass. `extra`: the backend's own
    distinctions (TF32 mode...). Asked at every call: the stream and capture state come from
    torch's C bindings (what Triton's launcher asks too), without a Stream object each."""
    if type(x) is not torch.Tensor or not x.is_cuda or torch.compiler.is_compiling() or not enabled():
        return None
    if torch._C._cuda_isCurrentStreamCapturing() or compile_only.active():
        return None
    device = x.device
    stream = torch._C._cuda_getCurrentRawStream(device.index)
    pdl = programmatic_launch.enabled(device)
    return (KEY, device, x.dtype, x.shape, x.data_ptr() % 16 == 0, stream, pdl, *extra)


@dataclass
class ProgramSlot:
    """One key's state in a block's backend cache."""

    calls: int = 0
    program: object | None = None  # torch.classes.inception_fast.LaunchProgram
    call: object | None = None  # its bound `call` (input -> output)
    refused: str | None = None


def replay(cache: dict, program_key: tuple, x: torch.Tensor) -> torch.Tensor | None:
    """The block's output on `x` from the program kept under `program_key` (which allocates the
    block's buffers and issues its launches), or None where there is none (yet)."""
    slot = cache.get(program_key)
    if slot is None or slot.call is None:
        return None
    return slot.call(x)


def run(cache: dict, program_key: tuple, buffers: tuple, run_launches, fresh_work: bool = True) -> None:
    """The block's launches on `buffers` (input, work, output: NCHW-shaped, channels_last) by
    `run_launches()`, which launches them one by one and returns whether every stage ran its
    launches one after another (False: some ran side by side, which a program does not replay);
    recorded on the key's RECORD_AT_CALL-th call into a program that later calls `replay`.
    `fresh_work`: the work buffer is the call's own (else a stand-in the program keeps)."""
    slot = cache.get(program_key)
    if slot is None:
        if sum(1 for found in cache if isinstance(found, tuple) and found[0] == KEY) >= MAX_SLOTS:
            run_launches()
            return
        slot = cache[program_key] = ProgramSlot()
    slot.calls += 1
    if slot.program is not None or slot.refused is not None or slot.calls < RECORD_AT_CALL:
        run_launches()
        return
    with launch_record.recording() as recorded:
        serial = run_launches()
    if not serial:
        slot.refused = "a stage ran its launches side by side"
        return
    try:
        program = build(recorded, buffers)
    except Unreplayable as why:
        slot.refused = str(why)
        return
    program.set_buffers(buffers[1], buffers[2], fresh_work)
    slot.program, slot.call = program, program.call


def build(recorded: launch_record.Recording, buffers: tuple):
    """The program of a recording made on `buffers` (input, work, output)."""
    if recorded.unreplayable:
        raise Unreplayable(recorded.unreplayable[0])
    if not recorded.launches:
        raise Unreplayable("the call launched nothing that a program replays")
    program = torch.classes.inception_fast.LaunchProgram()
    nhwc = {index: buffer.permute(0, 2, 3, 1) for index, buffer in enumerate(buffers)}  # as the ops take them
    for launch in recorded.launches:
        if isinstance(launch, launch_record.CutlassLaunches):
            for op in launch.launches:
                _add_cutlass(program, op, op.splits(nhwc))
        else:
            _add_triton(program, launch, buffers)
    return program


def _add_cutlass(program, op, split_k: int) -> None:
    """One CUTLASS launch as `gemm_routing.run_launches` issues it: on every SM."""
    if isinstance(op, gemm_routing.GemmLaunch):
        program.add_gemm(op.src, op.dst, op.weight, op.bias, op.col_offset, op.relu, 0, op.tf32, op.tile_m,
                         split_k)
    else:
        program.add_conv(op.src, op.dst, op.weight, op.bias, op.in_c0, op.out_c0, op.stride, op.pad_h,
                         op.pad_w, op.relu, op.tile_n, op.tf32, op.tile_m, split_k)


def _add_triton(program, launch: launch_record.TritonLaunch, buffers: tuple) -> None:
    compiled = launch.compiled
    meta = compiled.metadata
    kinds, values, keep = triton_params(compiled, launch.args, buffers)
    program.add_triton(int(compiled.function), [int(size) for size in launch.grid], 32 * int(meta.num_warps),
                       int(meta.shared), bool(getattr(meta, "launch_pdl", False)), kinds, values, keep)


def triton_params(compiled, args: tuple, buffers: tuple) -> tuple[list, list, list]:
    """(kinds, values, tensors to keep alive) of a compiled Triton kernel's parameters for
    `args` (every argument in signature order), as Triton's launcher passes them: constexprs
    left out, a pointer as an address (a buffer's by its index), integers and floats by their
    signature type. Raises Unreplayable for what the program does not pass."""
    meta = compiled.metadata
    for name in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, name, 0):
            raise Unreplayable(f"Triton kernel {compiled.name} needs scratch memory ({name})")
    if getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False):
        raise Unreplayable(f"Triton kernel {compiled.name} launches in clusters or as a cooperative grid")
    if getattr(meta, "tensordesc_meta", None):
        raise Unreplayable(f"Triton kernel {compiled.name} takes tensor descriptors")
    src = compiled.src
    names = list(src.fn.arg_names)
    if len(args) != len(names):
        raise Unreplayable(f"Triton kernel {compiled.name}: {len(args)} arguments, {len(names)} parameters")
    signature = src.signature
    constants = getattr(src, "constants", {}) or {}
    addresses = {buffer.data_ptr(): index for index, buffer in enumerate(buffers)}
    storages = {buffer.untyped_storage().data_ptr() for buffer in buffers}
    kinds, values, keep = [], [], []
    for i, (name, value) in enumerate(zip(names, args)):
        kind = signature.get(name, signature.get(i))
        if kind == "constexpr" or name in constants or i in constants or (i,) in constants:
            continue
        if not isinstance(kind, str):
            raise Unreplayable(f"Triton kernel {compiled.name}: parameter {name} of type {kind!r}")
        if kind.startswith("*"):
            kinds_value = _pointer(value, addresses, storages, name, keep)
        elif kind in _INT32_TYPES:
            kinds_value = (PARAM_INT32, _plain_int(value, name))
        elif kind in _INT64_TYPES:
            number = _plain_int(value, name)
            kinds_value = (PARAM_INT64, number - 2**64 if number >= 2**63 else number)
        elif kind in _FLOAT32_TYPES:
            kinds_value = (PARAM_FLOAT32, struct.unpack("<I", struct.pack("<f", float(value)))[0])
        else:
            raise Unreplayable(f"Triton kernel {compiled.name}: parameter {name} of type {kind}")
        kinds.append(kinds_value[0])
        values.append(kinds_value[1])
    return kinds, values, keep


def _pointer(value, addresses: dict, storages: set, name: str, keep: list) -> tuple[int, int]:
    if value is None:
        return PARAM_ADDRESS, 0
    if not isinstance(value, torch.Tensor):
        raise Unreplayable(f"pointer parameter {name} got a {type(value).__name__}")
    address = value.data_ptr()
    if address in addresses:
        return PARAM_BUFFER, addresses[address]
    if value.untyped_storage().data_ptr() in storages:
        raise Unreplayable(f"pointer parameter {name} points inside a block buffer, not at its start")
    keep.append(value)  # the program keeps it: the address stays valid
    return PARAM_ADDRESS, address


def _plain_int(value, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int):
        raise Unreplayable(f"integer parameter {name} got a {type(value).__name__}")
    return value
