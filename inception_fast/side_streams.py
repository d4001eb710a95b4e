"""Independent launches of one stage side by side: the first on the current stream, the others
each on a side stream forked from it and joined back before returning.

A backend that splits a stage into several launches (`triton-gemm`: a CUTLASS op per branch and
the stage kernel for the rest) would otherwise run them one after another, each leaving SMs idle
in its last wave, or the whole GPU idle where a launch has fewer tiles than SMs (small batches).
The launches of a stage read only what earlier stages wrote and write disjoint channel slices,
so their order does not matter. Under CUDA graph capture the fork and join become the graph's
edges, so a replay runs the branches concurrently too.

Serial where streams cannot help or cannot be traced: on the CPU, while torch.compile traces,
and with INCEPTION_FAST_SIDE_STREAMS=0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

ENV = "INCEPTION_FAST_SIDE_STREAMS"
MAX_SIDE_STREAMS = 4  # the widest stage of the family has 5 launches

_streams: dict = {}  # device -> its side streams, made on first use


def enabled() -> bool:
    setting = os.environ.get(ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV}={setting!r}: use 1 (launches of a stage side by side, the default) or 0")
    return setting == "1"


def _side_streams(device: torch.device) -> list:
    found = _streams.get(device)
    if found is None:
        found = _streams[device] = [torch.cuda.Stream(device) for _ in range(MAX_SIDE_STREAMS)]
    return found


def run_side_by_side(device: torch.device, launches: Sequence[Callable[[], None]]) -> None:
    """Call every launch (no arguments, no result); on a GPU the first on the current stream and
    the others on side streams, each ordered after everything queued on the current stream
    before this call, and the current stream ordered after all of them on return."""
    if len(launches) < 2 or device.type != "cuda" or torch.compiler.is_compiling() or not enabled():
        for launch in launches:
            launch()
        return
    main = torch.cuda.current_stream(device)
    sides = _side_streams(device)
    used = []
    for i, launch in enumerate(launches[1:]):
        side = sides[i % len(sides)]
        side.wait_stream(main)
        with torch.cuda.stream(side):
            launch()
        used.append(side)
    launches[0]()
    for side in used:
        main.wait_stream(side)
