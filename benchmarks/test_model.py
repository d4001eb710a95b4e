"""Whole model: the fused network on each backend against the anchors, same inputs, same process.

Anchors (BENCHMARKING.md): timm `inception_v4` eager in the dtype, channels_last; the same
under a CUDA graph; `torch.compile` default; `torch.compile` max-autotune with --max-autotune
(it compiles for minutes per shape). CUDA-graph configurations carry `-graph` in their id and
`cuda_graph: true` in the results. Without a GPU only the CPU comparisons run.
"""

from __future__ import annotations

import pytest
import torch
from harness import assert_accurate, judge, measure

from inception_fast import bench, costs, timing
from inception_fast.backends import backend_status
from inception_fast.optimize import optimize

CONFIGS = (
    "fused-torch", "fused-triton", "fused-cuda",
    "fused-triton-graph",  # optimize(..., cuda_graph=True): the backend's own whole-model graph
    "fused-cuda-graph",  # the cuda backend captured by inception_fast.timing.CapturedGraph
    "eager", "eager-graph", "compile-default", "compile-max-autotune",
)
_models: dict = {}
_expected: dict = {}


def _skip_reason(config: str, device: torch.device, options) -> str | None:
    gpu_only = config.endswith("-graph") or config.startswith("compile")
    if gpu_only and device.type != "cuda":
        return f"{config} needs a CUDA GPU"
    if config == "compile-default" and options.getoption("--no-compile"):
        return "--no-compile"
    if config == "compile-max-autotune" and not options.getoption("--max-autotune"):
        return "compiles for minutes per shape: run with --max-autotune"
    if config.startswith("fused-"):
        backend = config.split("-")[1]
        usable, reason = backend_status(backend, device)
        if not usable:
            return f"backend {backend!r} not usable on {device}: {reason}"
        if config == "fused-triton-graph" and not bench.supports_cuda_graph_option():
            return "optimize() has no cuda_graph option yet"
    return None


def _model(config: str, reference, dtype_name: str, device):
    """Built once per (configuration, dtype); torch.compile then specialises per batch size."""
    key = (config, dtype_name)
    if key not in _models:
        dtype = bench.DTYPES[dtype_name][0]
        if config.startswith("fused-"):
            backend = config.split("-")[1]
            # Graph every batch size timed, not only the small ones optimize() graphs by default.
            graphed = config == "fused-triton-graph"
            extra = {"cuda_graph": True, "cuda_graph_max_batch": 1 << 16} if graphed else {}
            _models[key] = optimize(reference, backend=backend, dtype=dtype, device=device, **extra)
        else:
            anchor, _ = bench.anchor_model(reference, dtype, device)
            if config.startswith("compile-"):
                anchor = torch.compile(anchor, mode=config.removeprefix("compile-"), dynamic=False)
            _models[key] = anchor
    return _models[key]


def _reference_outputs(reference, batch, dtype_name, image_size, device):
    """Inputs, the reference logits and the eager error for (batch, dtype); the last one kept."""
    key = (batch, dtype_name, image_size, str(device))
    if key not in _expected:
        _expected.clear()
        dtype, tf32_on = bench.DTYPES[dtype_name]
        ref_dtype = bench.reference_dtype(dtype)
        inputs = bench.make_inputs(batch, image_size, dtype, device, seed=batch)
        with torch.inference_mode():
            with bench.tf32(False):
                judge_model = bench.anchor_model(reference, ref_dtype, device)[0]
                expected = judge_model(inputs[0].to(ref_dtype))
                del judge_model
            with bench.tf32(tf32_on):
                eager = _model("eager", reference, dtype_name, device)
                eager_error = bench.output_errors(eager(inputs[0]), expected)["rel_l2"]
        _expected[key] = inputs, expected, eager_error
    return _expected[key]


@pytest.mark.parametrize("config", CONFIGS)
def test_model(benchmark, results, reference, device, image_size, budget_ms, pytestconfig, config, batch,
               dtype_name):
    reason = _skip_reason(config, device, pytestconfig)
    if reason:
        pytest.skip(reason)
    dtype, tf32_on = bench.DTYPES[dtype_name]
    inputs, expected, eager_error = _reference_outputs(reference, batch, dtype_name, image_size, device)
    graph = None
    with torch.inference_mode(), bench.tf32(tf32_on):
        captured = {"eager-graph": "eager", "fused-cuda-graph": "fused-cuda"}
        model = _model(captured.get(config, config), reference, dtype_name, device)
        if config in captured:
            graph = timing.CapturedGraph(model, inputs[0])
            out = graph.run(inputs[0])
        else:
            out = model(inputs[0])
        row = {
            "suite": "model", "config": config, "kind": "fused" if config.startswith("fused") else "anchor",
            "cuda_graph": config.endswith("-graph") or config == "compile-max-autotune",
            "batch": batch, "dtype": dtype_name, "image_size": image_size,
            "layout": "channels_last" if device.type == "cuda" else "contiguous",
            "reference_dtype": str(bench.reference_dtype(dtype)).replace("torch.", ""),
            "flops": costs.model_flops(image_size) * batch,
        }
        judge(row, out, expected, eager_error, dtype)
        del out
        row = measure(benchmark, results, row, model, inputs, graph=graph, budget_ms=budget_ms)
    if row["kind"] == "fused":
        assert_accurate(row)
