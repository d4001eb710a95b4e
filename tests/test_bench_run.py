"""inception_fast.bench on the CPU: the accuracy rule (a non-finite error never passes), a network
optimize() does not accept yet (reported, not a crash), and the same run once optimize() accepts
it (a stand-in optimize() here), with the JSON every report is made from."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from inception_fast import bench

FP16 = torch.float16


@pytest.mark.parametrize("fused, eager", [(math.inf, math.inf), (math.nan, 1e-3), (math.inf, 1e-3),
                                          (1e-3, math.inf)])
def test_a_non_finite_error_never_passes(fused, eager):
    # `bench --device cpu --dtype fp16 --image-size 96 --batch 1` once printed rel L2 inf, bound
    # inf, check pass: inf <= inf.
    result = bench.verdict(fused, eager, FP16)
    assert result["check"] == "fail" and result["reason"]


def test_the_accuracy_rule_is_two_times_eager_plus_slack():
    assert bench.verdict(2e-3, 1e-3, FP16) == {"bound": 2e-3 + bench.SLACK[FP16], "check": "pass"}
    assert bench.verdict(3e-3, 1e-3, FP16)["check"] == "fail"


def test_failed_checks_are_fused_rows_only_and_not_an_unsupported_network():
    rows = [
        {"kind": "fused", "check": "pass"}, {"kind": "anchor", "check": "fail"},
        {"kind": "fused", "status": "not supported", "check": None},
        {"kind": "fused", "check": "fail", "config": "bad"},
    ]
    assert [r.get("config") for r in bench.failed_checks({"results": rows})] == ["bad"]


def test_outputs_are_compared_as_one_tensor_per_image():
    features = [torch.randn(2, 2048, 1, 1)]  # pytorch-fid's list of pool3 maps
    assert bench.output_tensor(features).shape == (2, 2048)
    assert bench.output_tensor(torch.randn(2, 1000)).shape == (2, 1000)
    errors = bench.output_errors(features, features[0].flatten(1))
    assert errors == {"rel_l2": 0.0, "max_abs": 0.0}


def options(**kw) -> bench.BenchOptions:
    settings = {"model": "googlenet", "device": "cpu", "dtype": "fp32", "batches": (3,), "image_size": 64,
                "budget_ms": 5.0, "floor_budget_ms": 1.0}
    return bench.BenchOptions(**{**settings, **kw})


def test_a_network_optimize_does_not_accept_is_reported_and_nothing_is_timed(monkeypatch):
    import inception_fast

    def refuse(model, **kwargs):
        raise inception_fast.UnsupportedModel("conv1: a layer the kernels do not have")

    monkeypatch.setattr(bench, "optimize", refuse)
    document = bench.run_bench(options())
    (row,) = document["results"]
    assert row["status"] == "not supported" and row["model"] == "googlenet"
    assert row["error"].startswith("not supported by this version: optimize() raised UnsupportedModel: conv1")
    assert document["model_info"]["supported"] is False
    assert bench.failed_checks(document) == []


class Perturbed(nn.Module):
    """A stand-in fused model: the network in the dtype, its output nudged (or poisoned)."""

    def __init__(self, model, dtype, poison: bool):
        super().__init__()
        self.model, self.poison = copy.deepcopy(model).to(dtype).eval(), poison

    def forward(self, x):
        out = self.model(x)
        return out + (math.inf if self.poison else 1e-7 * out.abs().mean())


@pytest.fixture
def accepting_optimize(monkeypatch):
    """optimize() as a later version that accepts every network; poison=True makes its output inf."""
    state = {"poison": False, "calls": []}

    def fake(model, backend="auto", dtype=None, device=None, **kwargs):
        state["calls"].append({"backend": backend, "dtype": dtype, **kwargs})
        return Perturbed(model, dtype or torch.float32, state["poison"])

    monkeypatch.setattr(bench, "optimize", fake)
    return state


def test_a_network_optimize_accepts_is_timed_judged_and_floored(accepting_optimize):
    document = bench.run_bench(options())
    assert accepting_optimize["calls"][0] == {"backend": "auto", "dtype": torch.float32}  # as a user calls it
    assert document["schema"] == "inception_fast.bench/2" and document["model"] == "googlenet"
    info = document["model_info"]
    assert info["supported"] and info["image_size"] == 64 and info["gflops_per_image"] > 0
    rows = document["results"]
    timed = {(r["config_id"], r["batch"]): r for r in rows if r["suite"] == "model"}
    assert set(timed) == {(c, 3) for c in ("fused-default", "floor", "eager")}
    for batch in (3,):
        fused, eager = timed[("fused-default", batch)], timed[("eager", batch)]
        assert fused["check"] == "pass" and fused["model"] == "googlenet" and fused["median_ms"] > 0
        assert fused["best_anchor"] == eager["config"] == "torchvision eager fp32"
        assert fused["speedup_vs_best_anchor"] == pytest.approx(eager["median_ms"] / fused["median_ms"])
        floor = timed[("floor", batch)]
        assert floor["kind"] == "floor" and floor["config"] == "convs alone (F.conv2d, CPU)"
        assert floor["convs"] == 57 and "speedup_vs_best_anchor" not in floor
        blocks = [r for r in rows if r["suite"] == "conv-floor" and r["batch"] == batch]
        assert blocks[0]["label"] == "conv1 BasicConv2d"  # the stand-in fused model has no blocks
        assert "inception3a" in {b["block"] for b in blocks}
        assert sum(b["convs"] for b in blocks) == floor["convs"]
        assert sum(b["median_ms"] for b in blocks) == pytest.approx(floor["median_ms"])
    assert bench.failed_checks(document) == []


def test_a_non_finite_fused_output_fails_the_run(accepting_optimize):
    accepting_optimize["poison"] = True
    document = bench.run_bench(options(floor=False))
    (failed,) = bench.failed_checks(document)
    assert failed["config_id"] == "fused-default" and failed["rel_l2"] == math.inf
    assert "non-finite" in failed["reason"]
