"""The benchmarks' model table: every network builds from its library with random weights (no
download), its work is counted from the network itself, and this version's optimize() is asked,
not assumed, whether it accepts it."""

from __future__ import annotations

import pytest
import torch

from inception_fast import bench, bench_models, costs

# Multiply-accumulates per image as published (torchvision's and timm's model cards); the count
# from forward hooks must land within 1% (pool3 features only for FID: no classifier).
PUBLISHED_GMACS = {"googlenet": 1.50, "inception_v3": 5.71, "timm_inception_v3": 5.71,
                   "inception_resnet_v2": 13.16, "fid_inception_v3": 5.71}


@pytest.fixture(scope="module")
def table() -> dict:
    return {row["model"]: row for row in bench.model_table()}


def test_the_table_lists_every_network_with_its_input_and_anchors(table):
    assert list(table) == ["inception_v4", "googlenet", "inception_v3", "timm_inception_v3",
                           "inception_resnet_v2", "fid_inception_v3"]
    assert table["googlenet"]["image_size"] == 224 and table["inception_v4"]["image_size"] == 299
    assert table["fid_inception_v3"]["dtype"] == "fp32-tf32"  # what pytorch-fid runs
    assert "eager-nchw" in table["fid_inception_v3"]["anchors"]
    assert all("compile-ro-freezing" in row["anchors"] for row in table.values())


def built(table: dict) -> dict:
    """The rows of networks whose library is installed (pytorch-fid is optional here)."""
    missing = {name: row["error"] for name, row in table.items() if "error" in row}
    assert all("cannot build" in why for why in missing.values()), missing
    return {name: row for name, row in table.items() if name not in missing}


def test_work_per_image_is_counted_from_the_network(table):
    import inception_fast

    plans = [b.plan for b in inception_fast.optimize(inception_fast.inception_v4(), backend="torch").blocks]
    assert table["inception_v4"]["gflops_per_image"] == round(costs.network_flops(plans, 299, 299) / 1e9, 3)
    rows = built(table)
    for name, gmacs in PUBLISHED_GMACS.items():
        if name in rows:
            assert rows[name]["gflops_per_image"] / 2 == pytest.approx(gmacs, rel=0.01), name


def test_optimize_is_asked_whether_it_accepts_each_network(table):
    assert table["inception_v4"]["optimize"] == "accepted"
    for row in built(table).values():
        assert row["optimize"] == "accepted" or row["optimize"].startswith("not supported by this version: ")


def test_calibrated_source_models_are_realistically_scaled():
    """BatchNorm calibrated on random images: O(1) activations at the output, not 0 or 1e4."""
    model = bench_models.get("googlenet").calibrated(seed=3, image_size=64)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(logits).all() and 0.05 < logits.std().item() < 50


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="googlenet"):
        bench_models.get("resnet50")
