"""Time one configuration, check its accuracy, record one row: shared by the block and the
whole-model benchmarks.

What is timed, honestly:
- GPU: `inception_fast.timing` (CUDA events around each call, L2 flushed, inputs rotated,
  median) gives `median_ms`, the number that goes into the results. pytest-benchmark's own
  columns, printed in its table, are the host wall time of a few synchronised calls
  (`fn(); torch.cuda.synchronize()`), which adds the launch latency and the sync round trip:
  read them as a sanity check, not as the result.
- CPU: the work is synchronous, so pytest-benchmark's perf_counter rounds are the measurement
  and their median is `median_ms`.
"""

from __future__ import annotations

import statistics

import torch

from inception_fast import bench, timing

GPU_PYTEST_ROUNDS = 5


def _pytest_benchmark(benchmark, call, on_gpu: bool, rounds: int):
    """Run pytest-benchmark's rounds; their median in ms, or None when it is disabled."""
    def synced():
        call()
        if on_gpu:
            torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=rounds, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median * 1e3 if stats is not None else None


def measure(
    benchmark, results, row: dict, fn, inputs: list[torch.Tensor], *,
    graph: timing.CapturedGraph | None = None, budget_ms: float | None = None, cpu_rounds: int = 5,
) -> dict:
    """Time `fn` (or the captured `graph`) over rotating `inputs` and record `row` completed
    with the timing. The caller has already filled in the accuracy fields."""
    on_gpu = inputs[0].is_cuda
    state = {"i": 0}

    def next_call():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return graph.run(x) if graph is not None else fn(x)

    if on_gpu:
        measured = timing.time_graph(graph, inputs, budget_ms=budget_ms or 1000.0) if graph is not None \
            else timing.time_callable(fn, inputs, budget_ms=budget_ms)
        wall_ms = _pytest_benchmark(benchmark, next_call, True, GPU_PYTEST_ROUNDS)
        values = {**measured.as_dict(), "host_wall_synced_ms": wall_ms}
    else:
        wall_ms = _pytest_benchmark(benchmark, next_call, False, cpu_rounds)
        if wall_ms is None:  # --benchmark-disable: fall back to the library's CPU timer
            values = timing.time_callable(fn, inputs, budget_ms=budget_ms).as_dict()
        else:
            data = benchmark.stats.stats.data
            values = {
                "median_ms": wall_ms, "q20_ms": min(data) * 1e3, "q80_ms": max(data) * 1e3,
                "min_ms": min(data) * 1e3, "reps": len(data), "method": "perf_counter (pytest-benchmark)",
            }
            if len(data) >= 5:
                q = statistics.quantiles([d * 1e3 for d in data], n=5)
                values["q20_ms"], values["q80_ms"] = q[0], q[-1]
    batch = inputs[0].shape[0]
    row = {**row, **values, "images_per_s": batch / (values["median_ms"] / 1e3)}
    if row.get("flops"):
        row["tflops"] = row["flops"] / (values["median_ms"] / 1e3) / 1e12
    benchmark.extra_info.update({k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))})
    results.add(row)
    return row


def judge(row: dict, out, expected: torch.Tensor, eager_error: float, dtype) -> dict:
    """Fill the accuracy fields of `row`: relative L2 and max |error| vs the reference, the 2x
    bound from the eager error, and the verdict (`inception_fast.bench`'s rule: a non-finite
    error never passes)."""
    row.update(bench.output_errors(out, expected))
    row.update(bench.judged(row, eager_error, dtype, bench.reference_dtype(dtype)))
    return row


def assert_accurate(row: dict) -> None:
    bound = "none (eager is not finite)" if row.get("bound") is None else f"{row['bound']:.3e}"
    assert row["check"] == "pass", (
        f"{row['config']}: {row.get('reason')}: relative L2 {row['rel_l2']:.3e} vs the "
        f"{row.get('reference_dtype')} reference; eager {row['eager_rel_l2']:.3e}, bound {bound}"
    )
