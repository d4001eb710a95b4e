"""inception_fast.bench on a GPU: the torch.compile anchors freeze exactly when asked, and one
short `inception-fast bench` runs every GPU configuration (fused default, fused under a CUDA
graph, eager under a CUDA graph, the cuDNN floor) and passes its own accuracy check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from inception_fast import anchors

pytestmark = pytest.mark.cuda


def small_network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


@pytest.mark.parametrize("name, freezes", [("compile", False), ("compile-freezing", True),
                                           ("compile-ro-freezing", True)])
def test_a_compiled_anchor_freezes_only_when_asked(monkeypatch, name, freezes):
    import torch._inductor.freezing as freezing

    calls = []
    real_freeze = freezing.freeze
    monkeypatch.setattr(freezing, "freeze", lambda *a, **k: calls.append(1) or real_freeze(*a, **k))
    model = small_network().cuda().half().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(x)
        out = anchors.compiled(model, anchors.COMPILE_ANCHORS[name])(x)
    assert bool(calls) == freezes
    assert torch._inductor.config.freezing is False  # the global setting is left alone
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    torch._dynamo.reset()


def test_a_short_gpu_bench_runs_every_gpu_configuration(tmp_path):
    result_path = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "inception_fast", "bench", "--batch", "1,8", "--image-size", "107",
         "--no-compile", "--budget-ms", "100", "--json", str(result_path)],
        check=False, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    rows = json.loads(result_path.read_text())["results"]
    timed = {(r["config_id"], r["batch"]) for r in rows if r["suite"] == "model" and "median_ms" in r}
    for config in ("fused-default", "fused-auto-graph", "eager", "eager-graph", "floor"):
        assert {(config, 1), (config, 8)} <= timed, (config, sorted(timed))
    floor = next(r for r in rows if r.get("config_id") == "floor")
    assert floor["config"] == "cuDNN convs alone" and floor["convs"] == 149
    # Peak memory of one call: measured for plain calls (at least the output), none for graph replays.
    for r in rows:
        if r.get("config_id") in ("eager", "eager-graph", "fused-auto-graph") and "median_ms" in r:
            graphed = r["cuda_graph"]
            assert (r["peak_mb"] is None) if graphed else r["peak_mb"] >= r["batch"] * 1000 * 2 / 2**20, r
