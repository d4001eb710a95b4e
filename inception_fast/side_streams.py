"""Independent launches of one stage side by side: the first on the current stream, the others
each on a side stream forked from it and joined back before returning.

A backend that splits a stage into several launches (`triton-gemm`: a CUTLASS op per branch and
the stage kernel for the rest) would otherwise run them one after another, each leaving SMs idle
in its last wave, or the whole GPU idle where a launch has fewer tiles than SMs (small batches).
The launches of a stage read only what earlier stages wrote and write disjoint channel slices,
so their order does not matter. Under CUDA graph capture the fork and join become the graph's
edges, so a replay runs the branches concurrently too.

Serial where streams cannot help or cannot be traced: on the CPU, while torch.compile traces,
and with INCEPTION_FAST_SIDE_STREAMS=0. (`triton-gemm` also runs a small stage's launches one
after another outside a CUDA graph capture: there the host, not the GPU, bounds the call.)

Persistent launches (the CUTLASS ops) size their grids to every SM, so two of them side by side
still run one after the other, and each re-reads a stage input that the L2 cannot hold at large
batches. `sm_shares` gives each a share of the SMs in proportion to its work instead: they run
at once and walk the input's pixels at about the same pace, so one fetches what the others read
from L2 (INCEPTION_FAST_SM_SHARES=0: every launch gets every SM).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

ENV = "INCEPTION_FAST_SIDE_STREAMS"
ENV_SHARES = "INCEPTION_FAST_SM_SHARES"
MAX_SIDE_STREAMS = 4  # the widest stage of the family has 5 launches

_streams: dict = {}  # device -> its side streams, made on first use


def enabled() -> bool:
    setting = os.environ.get(ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV}={setting!r}: use 1 (launches of a stage side by side, the default) or 0")
    return setting == "1"


def sm_shares(work: Sequence[float], sm_count: int) -> list[int]:
    """SMs for each of a stage's side-by-side persistent launches, in proportion to `work`, in
    whole pairs (the ops' 2-CTA clusters), at least one pair each, summing to at most
    `sm_count`; all 0 (every SM each) for a single launch, without side streams, or with
    INCEPTION_FAST_SM_SHARES=0."""
    setting = os.environ.get(ENV_SHARES, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV_SHARES}={setting!r}: use 1 (side-by-side launches share the SMs) or 0")
    pairs = sm_count // 2
    if len(work) < 2 or setting == "0" or not enabled() or pairs < len(work):
        return [0] * len(work)
    total = sum(work)
    exact = [pairs * w / total for w in work]
    shares = [max(1, int(e)) for e in exact]
    while sum(shares) > pairs:  # the floor of one pair each can overshoot: trim the largest
        shares[shares.index(max(shares))] -= 1
    for i in sorted(range(len(work)), key=lambda i: shares[i] - exact[i])[: pairs - sum(shares)]:
        shares[i] += 1  # the pairs left over to the launches furthest below their part
    return [2 * share for share in shares]


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
