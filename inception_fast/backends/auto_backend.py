"""backend="auto" on a GPU: for each block, batch-size bucket, dtype and card, the fastest of
the `triton` kernels, `triton-gemm` (the same with the convs that fit on the CUTLASS sm90 GEMM
and implicit-GEMM conv ops; only where the extension was built with the CUTLASS headers), the
`cuda` kernels and the `torch` backend (cuDNN's convolutions on the folded weights: no block
runs slower than the library can run it), timed once on the first input of that kind and
remembered in ``autoselect.json`` of the cache directory (see `inception_fast.cache`). On the
kind of card `shipped_choices.json` was measured on (132-SM Hopper) the shipped times decide
instead, so a first call times nothing; INCEPTION_FAST_AUTOTUNE=force times anew. The
experimental backends `triton-block` (one launch per block), `triton-tma` (stride-1 convs on
the TMA kernel) and `cuda-gemm` (1x1 convs on the CUTLASS GEMM op beside the cuda kernels)
join the candidates where INCEPTION_FAST_AUTO_EXPERIMENTS names them (comma-separated): each
lengthens a first call by its compiling and timing, and none is a default. A cached entry that
lacks a candidate of this process has that candidate timed and added.
`choice_table()` lists the choices for `inception-fast info`.

This module is itself a backend (availability / run_block), so a model whose blocks
are set to "auto" dispatches each call to the backend chosen for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import statistics
import sys
from pathlib import Path

import torch

from .. import cache, timing
from ..kernels.triton import compile_only, tuning
from ..packing import unsupported_reason
from . import AUTO_CANDIDATES, EXPERIMENTAL, backend_status, get_backend, precision_key, shipped_choices

TRITON_KERNELS = True  # a first call compiles Triton kernels (see inception_fast.compile_ahead)

ENV_EXPERIMENTS = "INCEPTION_FAST_AUTO_EXPERIMENTS"


def candidates(setting: str | None) -> tuple[str, ...]:
    """The backends `auto` weighs: the kernels, the experiments named in `setting` (the value
    of INCEPTION_FAST_AUTO_EXPERIMENTS), then torch. The first usable one runs where nothing
    can be timed."""
    *kernels, library = AUTO_CANDIDATES
    named = [name.strip() for name in (setting or "").split(",") if name.strip()]
    unknown = [name for name in named if name not in EXPERIMENTAL]
    if unknown:
        raise ValueError(f"{ENV_EXPERIMENTS}={setting!r}: {', '.join(unknown)} is not an experimental "
                         f"backend; name any of {', '.join(EXPERIMENTAL)}, comma-separated")
    return (*kernels, *[name for name in EXPERIMENTAL if name in named], library)


CANDIDATES = candidates(os.environ.get(ENV_EXPERIMENTS))
WARMUP, REPEATS = 2, 5
CALLS_PER_GRAPH = 32  # calls of a block per timed graph at batch 1, fewer at larger batches
logger = logging.getLogger("inception_fast")
_usable_on: dict = {}  # device -> usable candidate names (availability is checked once)
_announced: set = set()  # (device, dtype, batch bucket) whose timing was announced in this process


def cache_file() -> Path:
    return cache.BACKEND_CHOICES.path()


def batch_bucket(batch: int) -> int:
    """The power of two at or above `batch`: nearby batch sizes share one measurement."""
    return 1 << max(0, batch - 1).bit_length()


def _usable(device) -> list[str]:
    device = torch.device(device)
    if device not in _usable_on:
        _usable_on[device] = [name for name in CANDIDATES if backend_status(name, device)[0]]
    return _usable_on[device]


def availability(device=None) -> tuple[bool, str]:
    reasons = {name: backend_status(name, device) for name in CANDIDATES}
    usable = [name for name, (ok, _) in reasons.items() if ok]
    # A choice among the GPU kernels and cuDNN: with no kernel backend usable there is none.
    if any(name != "torch" for name in usable):
        return True, f"chooses per block among {', '.join(usable)}"
    return False, "; ".join(f"{name}: {why}" for name, (_, why) in reasons.items() if name != "torch")


def _load() -> dict:
    """key -> {"backend": name, "ms": {name: median ms}}, validated (`cache.BACKEND_CHOICES`)."""
    return cache.BACKEND_CHOICES.entries()


def _save(key: str, entry: dict) -> None:
    """Merge one entry into the file (other processes may have added theirs) atomically."""
    cache.BACKEND_CHOICES.put(key, entry)


def _median_ms(run, x: torch.Tensor) -> float:
    """Median ms of one `run(x)`, replayed from a CUDA graph: at small batches a block's kernels
    take less GPU time than the host needs to launch them, and timing plain calls would
    compare host overheads instead of the kernels. A block at batch 1 takes 10-50 us, about
    what a graph launch costs, so small batches put several calls in one graph
    (CALLS_PER_GRAPH // bucket), and the first replay, at whatever clock the GPU was idling at,
    is not timed. The warm-up calls may compile, tune and pack."""
    calls = max(1, CALLS_PER_GRAPH // batch_bucket(x.shape[0]))
    graph, _ = timing.capture_graph(lambda: [run(x) for _ in range(calls)], warmup=WARMUP, device=x.device)
    graph.replay()
    return statistics.median(timing.replay_ms(graph, REPEATS)) / calls


def cache_key(card: str, table_key: str) -> str:
    """The key of a choice in ``autoselect.json``: the card and this torch before the shipped
    table's key ("dtype|kind@HxW|b<bucket>")."""
    return f"{card}|torch{torch.__version__}|{table_key}"


def _key(kind: str, x: torch.Tensor) -> str:
    n, _, h, w = x.shape
    card = torch.cuda.get_device_name(x.device)
    return cache_key(card, f"{precision_key(x)}|{kind}@{h}x{w}|b{batch_bucket(n)}")


def _can_time() -> bool:
    return tuning.can_time()  # the same rule as the tile tuning's


def _known(kind: str, x: torch.Tensor, usable: list) -> tuple[str, dict, list]:
    """(cache key, the block times known for inputs like `x`, the usable backends without one):
    the times cached on this machine, else those shipped for this kind of card
    (`shipped_choices`, which has a time for every usable backend or gives nothing)."""
    key = _key(kind, x)
    entry = _load().get(key)
    if entry is not None:
        ms = dict(entry["ms"])
    else:
        n, _, h, w = x.shape
        bucket = batch_bucket(n)
        ms = shipped_choices.lookup(x.device, precision_key(x), f"{kind}@{h}x{w}", bucket, usable) or {}
    return key, ms, [name for name in usable if name not in ms]


def choose(kind: str, x: torch.Tensor, runners: dict) -> str:
    """The backend for `kind` on inputs like `x`: the fastest usable one by the remembered or
    shipped times, timing now only the usable backends without one (an experiment switched on,
    the CUDA extension built since, a card the table was not made on) and merging their times
    into the cache's entry, so processes with other candidates add to one another's
    measurements. `runners` maps each usable backend's name to a callable taking `x`."""
    usable = list(runners)
    if not usable:
        raise RuntimeError("backend 'auto' found no usable backend here")
    key, ms, missing = _known(kind, x, usable)
    if missing and len(usable) > 1 and _can_time():
        _announce(x, missing)
        with torch.no_grad():
            for name in missing:
                try:
                    ms[name] = _median_ms(runners[name], x)
                except Exception as err:  # noqa: BLE001 - a backend that fails here just loses
                    ms[name] = float("inf")
                    logger.warning("inception_fast: backend %r failed on %s: %s", name, kind, err)
        best = min(usable, key=ms.get)
        _save(key, {"backend": best, "ms": {name: round(t, 4) for name, t in ms.items()}})
        return best
    timed = [name for name in usable if name in ms]
    if timed:
        return min(timed, key=ms.get)
    return usable[0]  # nothing to compare, or no timing possible now: remember nothing


def _to_compile(kind: str, x: torch.Tensor, runners: dict) -> list:
    """In a compile-only pass: the backends the real call will run, so that their kernels
    compile now: those it will time, else its choice."""
    _, _, missing = _known(kind, x, list(runners))
    return missing if len(runners) > 1 and missing else [choose(kind, x, runners)]


def _announce(x: torch.Tensor, names: list) -> None:
    """One progress line per device, dtype and batch bucket: a first call at a new size times
    every block's candidates (seconds, more where their kernels still compile)."""
    what = (x.device, precision_key(x), batch_bucket(x.shape[0]))
    if what not in _announced:
        _announced.add(what)
        print(f"inception_fast: timing {', '.join(names)} per block for batch {x.shape[0]} "
              f"({what[1]}), once; the choices are kept in {cache_file()}", file=sys.stderr)


def block_kind(block) -> str:
    """What the block computes, as its channels and a digest of its plan without the name and
    with each stage's ops and each conv's writes in a canonical order: blocks that compute the
    same under other module names or branch orders (timm's Inception-v4 and the reference one)
    share a choice, shipped or timed."""
    plan = block.plan
    stages = tuple(
        tuple(sorted((_canonical_op(op) for op in stage), key=repr)) for stage in plan.stages
    )
    canonical = (plan.in_channels, plan.out_channels, plan.work_channels, stages)
    digest = hashlib.sha1(repr(canonical).encode()).hexdigest()[:10]
    return f"{plan.in_channels}-{plan.out_channels}-{digest}"


def _canonical_op(op):
    writes = getattr(op, "writes", None)
    return dataclasses.replace(op, writes=tuple(sorted(writes, key=repr))) if writes else op


def _backends(block, device) -> dict:
    """The usable backends for `block` (the kernels only where the packed format takes it)."""
    names = _usable(device)
    runs_on_kernels = block.backend_cache.get("kernels-ok")
    if runs_on_kernels is None:
        runs_on_kernels = block.backend_cache["kernels-ok"] = unsupported_reason(block.plan) is None
    if not runs_on_kernels:
        names = [name for name in names if name == "torch"]
    return {name: get_backend(name) for name in names}


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    # The choice is kept on the block per input kind: a call that finds it does no key building,
    # hashing or cache reading (a choice made where nothing could be timed is not kept).
    n, _, h, w = x.shape
    key = ("auto", x.device, precision_key(x), h, w, batch_bucket(n))
    name = block.backend_cache.get(key)
    if name is None:
        backends = _backends(block, x.device)
        runners = {name: (lambda t, b=b: b.run_block(block, t)) for name, b in backends.items()}
        if compile_only.active():
            outs = [runners[name](x) for name in _to_compile(block_kind(block), x, runners)]
            return outs[-1]  # never written: only its shape matters to the blocks after
        name = choose(block_kind(block), x, runners)
        if _can_time():
            block.backend_cache[key] = name
    return get_backend(name).run_block(block, x)


def choice_table() -> list[dict]:
    """Every remembered choice: card, torch, dtype, block@size, batch bucket, backend, times."""
    rows = []
    for key, entry in sorted(_load().items()):
        card, torch_version, dtype, kind, bucket = key.split("|")
        rows.append({
            "card": card, "torch": torch_version.removeprefix("torch"), "dtype": dtype, "block": kind,
            "batch_bucket": int(bucket[1:]), "backend": entry["backend"], "ms": entry["ms"],
        })
    return rows
