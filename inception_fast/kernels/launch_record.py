"""What a block's call launched, in order, while a recording is active on this thread: each
Triton launch that went through `triton.relaunch.Relauncher` (its compiled kernel, grid and
arguments) and each CUTLASS launch of `backends.gemm_routing.run_launches`. The launches still
run as always; `backends.launch_program` turns a recording into a program that issues them
again from C++.

A launch that cannot be replayed (a Triton launch that bound its arguments through Triton, a
kernel that was only compiled) is noted as such, and a recording that holds one makes no
program.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class TritonLaunch:
    compiled: object  # triton.compiler.CompiledKernel, loaded
    grid: tuple  # three sizes
    args: tuple  # every argument in the kernel's signature order, constexprs included


@dataclass
class CutlassLaunches:
    launches: list  # gemm_routing.GemmLaunch / ConvLaunch, one after another on every SM


@dataclass
class Recording:
    launches: list = field(default_factory=list)  # TritonLaunch / CutlassLaunches, in launch order
    unreplayable: list = field(default_factory=list)  # why each launch that cannot be replayed cannot


_local = threading.local()


def active() -> Recording | None:
    """This thread's recording, if one is active."""
    return getattr(_local, "recording", None)


@contextmanager
def recording():
    """Notes this thread's launches inside the block into the yielded Recording."""
    if active() is not None:
        raise RuntimeError("a launch recording is already active on this thread")
    found = _local.recording = Recording()
    try:
        yield found
    finally:
        _local.recording = None


def note_triton(compiled, grid: tuple, args: tuple) -> None:
    found = active()
    if found is not None:
        found.launches.append(TritonLaunch(compiled, grid, args))


def note_cutlass(launches: list) -> None:
    found = active()
    if found is not None:
        found.launches.append(CutlassLaunches(list(launches)))


def note_unreplayable(why: str) -> None:
    found = active()
    if found is not None:
        found.unreplayable.append(why)
