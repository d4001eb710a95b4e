"""The one place where time is measured (CLI and `benchmarks/` both call it).

- GPU: CUDA events around each call, after a warm-up; the L2 cache is flushed before every
  timed call (as `triton.testing.do_bench` does) and the call rotates through several input
  sets, so no call finds its input or its weights' neighbours still cached from the last one.
  The median over the repetitions is the number reported.
- CUDA-graph replay: the same, with the work captured once into a `torch.cuda.CUDAGraph`;
  the timed region is `graph.replay()` alone; copying the next input set into the graph's
  static input happens before the start event and is not timed.
- CPU: `time.perf_counter` around each call (CPU work is synchronous), medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current L2 (H100: 50 MB, H200: 60 MB)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float
    min_ms: float
    reps: int
    method: str  # "cuda-events", "cuda-graph-replay" or "perf_counter"

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(samples_ms: Sequence[float], method: str) -> Timing:
    samples = sorted(samples_ms)
    if len(samples) >= 5:
        quintiles = statistics.quantiles(samples, n=5)
        q20, q80 = quintiles[0], quintiles[-1]
    else:
        q20, q80 = samples[0], samples[-1]
    return Timing(statistics.median(samples), q20, q80, samples[0], len(samples), method)


def _reps_for(estimate_ms: float, budget_ms: float, min_reps: int, max_reps: int) -> int:
    return int(max(min_reps, min(max_reps, budget_ms / max(estimate_ms, 1e-3))))


def time_cpu(
    fn: Callable[[int], object], *, warmup: int = 2, budget_ms: float = 2000.0,
    min_reps: int = 3, max_reps: int = 200,
) -> Timing:
    """Median wall time of `fn(i)` (i = repetition index, for rotating inputs) on the CPU."""
    start = time.perf_counter()
    for i in range(warmup):
        fn(i)
    estimate = (time.perf_counter() - start) * 1e3 / max(warmup, 1)
    samples = []
    for i in range(_reps_for(estimate, budget_ms, min_reps, max_reps)):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1e3)
    return _summary(samples, "perf_counter")


def time_cuda(
    fn: Callable[[int], object], *, before: Callable[[int], object] | None = None,
    warmup_ms: float = 100.0, budget_ms: float = 1000.0, min_reps: int = 10, max_reps: int = 500,
    flush_l2: bool = True, method: str = "cuda-events",
) -> Timing:
    """Median GPU time of `fn(i)` on the current stream, by CUDA events.

    `before(i)` runs untimed ahead of each call (e.g. copying input set i into a CUDA graph's
    static input). The warm-up runs for about `warmup_ms` (at least 3 calls), then enough
    repetitions to fill about `budget_ms` of GPU time, within [min_reps, max_reps].
    """
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda") if flush_l2 else None

    def one_call(i: int, start: torch.cuda.Event, end: torch.cuda.Event) -> None:
        if before is not None:
            before(i)
        if flush is not None:
            flush.zero_()
        start.record()
        fn(i)
        end.record()

    # Estimate the time of one call from a short series, then size warm-up and repetitions.
    torch.cuda.synchronize()
    probe = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(3)]
    for i, (start, end) in enumerate(probe):
        one_call(i, start, end)
    torch.cuda.synchronize()
    estimate = statistics.median(s.elapsed_time(e) for s, e in probe)
    for i in range(_reps_for(estimate, warmup_ms, 1, max_reps)):
        fn(i)
    reps = _reps_for(estimate, budget_ms, min_reps, max_reps)
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
    ]
    torch.cuda.synchronize()
    for i, (start, end) in enumerate(events):
        one_call(i, start, end)
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in events], method)


def capture_graph(fn: Callable[[], object], warmup: int = 1, device=None) -> tuple:
    """`fn()` captured into a CUDA graph, after `warmup` calls, PyTorch's recipe: warm-up on a
    side stream (lazy initialisation, algorithm search, compiling and allocator growth happen
    outside the graph) and capture on that same stream, so that buffers a backend keeps per
    stream exist before the capture. Returns (graph, fn's output: the graph's static output)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        output = fn()
    return graph, output


def replay_ms(graph, repeats: int) -> list[float]:
    """The GPU time of each of `repeats` replays of a captured graph, in ms (no L2 flush: for
    choosing between candidates, where every candidate sees the same cache)."""
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


class CapturedGraph:
    """`fn(static_input)` captured into a CUDA graph (`capture_graph`, three warm-up calls);
    `run(x)` copies x in and replays. The output tensor is the graph's static output,
    overwritten on every replay."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3):
        self.static_input = example.clone()
        with torch.inference_mode():
            self.graph, self.static_output = capture_graph(lambda: fn(self.static_input), warmup)
        torch.cuda.synchronize()

    def load(self, x: torch.Tensor) -> None:
        self.static_input.copy_(x)

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.static_output

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.load(x)
        return self.replay()


def time_callable(
    fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor], *, budget_ms: float | None = None,
    warmup_ms: float = 100.0,
) -> Timing:
    """Median time of `fn(x)` over rotating `inputs`, on their device (events or perf_counter).
    `warmup_ms` (GPU) can be short where many small problems are timed one after another."""
    def rotate(i: int):
        return fn(inputs[i % len(inputs)])

    if inputs[0].is_cuda:
        return time_cuda(rotate, budget_ms=budget_ms or 1000.0, warmup_ms=warmup_ms)
    return time_cpu(rotate, budget_ms=budget_ms or 2000.0)


def time_graph(graph: CapturedGraph, inputs: Sequence[torch.Tensor], *, budget_ms: float = 1000.0) -> Timing:
    """Median replay time of a captured graph; loading each input set is not timed."""
    return time_cuda(
        lambda i: graph.replay(), before=lambda i: graph.load(inputs[i % len(inputs)]),
        budget_ms=budget_ms, method="cuda-graph-replay",
    )


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
