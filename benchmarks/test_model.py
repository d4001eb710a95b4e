"""Whole model: each network of `inception_fast.bench_models` fused, on each backend, against the
anchors, same inputs, same process.

Configurations and anchors are `inception_fast.bench`'s (the ids are its `config_id`s): the
fused default (`optimize(model, dtype=...)`), the fused model on each backend and under a CUDA
graph; eager in the dtype with channels_last, the same under a CUDA graph, torch.compile without
and with freezing (default from batch 32 up, reduce-overhead up to 32; max-autotune with
--max-autotune). CUDA-graph configurations carry `cuda_graph: true` in the results. A network
that optimize() does not accept yet, a configuration that needs a GPU, and a compiled anchor
outside its batch sizes are skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch
from harness import assert_accurate, judge, measure

from inception_fast import anchors, bench

# fused-auto is left out: it is the fused default's call with backend="auto" spelled out; the
# experimental backends run where `inception-fast bench --backend` names them.
CONFIGS = tuple(c for c in bench.CONFIG_IDS
                if c not in ("fused-auto", bench.FLOOR_ID, *bench.EXPERIMENTAL_IDS))


@pytest.mark.parametrize("config", CONFIGS)
def test_model(benchmark, results, model_benches, budget_ms, model_name, config, batch, dtype_name):
    model = model_benches.get(model_name, dtype_name)
    reason = model.skip_reason(config, batch)
    if reason:
        pytest.skip(reason)
    inputs, expected, eager_error = model_benches.reference(model, batch)
    with torch.inference_mode(), bench.tf32(model.tf32_on):
        setup = model.config(config)
        fn, graph, out, setup_s = model.prepare(setup, batch, inputs[0])
        row = model.row(setup, batch, setup_s=round(setup_s, 3), flops=model.flops_per_image * batch)
        judge(row, out, expected, eager_error, model.dtype)
        del out
        row = measure(benchmark, results, row, fn, inputs, graph=graph, budget_ms=budget_ms)
        del fn, graph
    if config in anchors.COMPILE_ANCHORS:
        torch._dynamo.reset()  # frees the compiled graphs and their frozen weights
    if row["kind"] == "fused":
        assert_accurate(row)
