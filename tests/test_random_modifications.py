"""A hand-modified network either runs exactly as modified or is refused: random edits of
convs, BatchNorms, pools and activations anywhere in each family network, then the fused model
(torch backend, float64) against the edited source. Edits the source itself cannot run (a
shape that no longer fits) are skipped; every other one must equal the source or raise."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from inception_fast import optimize
from inception_fast.testing import calibrated_model, relative_l2

pytest.importorskip("timm")
pytest.importorskip("torchvision")

TRIALS = 14


def _conv_edits(m: nn.Conv2d) -> list:
    return [
        ("padding + 1", lambda: setattr(m, "padding", tuple(p + 1 for p in m.padding))),
        ("stride 2", lambda: setattr(m, "stride", (2, 2))),
        ("dilation 2", lambda: setattr(m, "dilation", (2, 2))),
        ("a bias", lambda: setattr(m, "bias", nn.Parameter(torch.randn_like(m.weight[:, 0, 0, 0])))),
        ("reflect padding", lambda: setattr(m, "padding_mode", "reflect")),
    ]


def _bn_edits(m: nn.BatchNorm2d) -> list:
    return [
        ("eps 0.5", lambda: setattr(m, "eps", 0.5)),
        ("no affine", lambda: (setattr(m, "weight", None), setattr(m, "bias", None))),
        ("batch statistics", lambda: (setattr(m, "track_running_stats", False),
                                      setattr(m, "running_mean", None), setattr(m, "running_var", None))),
        ("training mode", m.train),
    ]


def _pool_edits(m: nn.Module) -> list:
    edits = [
        ("ceil_mode flipped", lambda: setattr(m, "ceil_mode", not m.ceil_mode)),
        ("kernel 5", lambda: setattr(m, "kernel_size", 5)),
        ("padding 1", lambda: setattr(m, "padding", 1)),
        ("stride 1", lambda: setattr(m, "stride", 1)),
    ]
    if isinstance(m, nn.AvgPool2d):
        edits += [
            ("count_include_pad flipped", lambda: setattr(m, "count_include_pad", not m.count_include_pad)),
            ("divisor_override 4", lambda: setattr(m, "divisor_override", 4)),
        ]
    else:
        edits += [("dilation 2", lambda: setattr(m, "dilation", 2))]
    return edits


def _replacements(model: nn.Module, name: str, m: nn.Module) -> list:
    parent = model.get_submodule(name.rpartition(".")[0])
    attr = name.rpartition(".")[2]
    swaps = {nn.MaxPool2d: nn.AvgPool2d(3, 1, 1), nn.AvgPool2d: nn.MaxPool2d(3, 1, 1)}
    other = swaps.get(type(m), nn.ReLU6())
    return [
        ("replaced by Identity", lambda: setattr(parent, attr, nn.Identity())),
        (f"replaced by {type(other).__name__}", lambda: setattr(parent, attr, other)),
    ]


def _edits(model: nn.Module, name: str, m: nn.Module) -> list:
    if isinstance(m, nn.Conv2d):
        return _conv_edits(m)
    if isinstance(m, nn.BatchNorm2d):
        return _bn_edits(m)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool_edits(m) + _replacements(model, name, m)
    if isinstance(m, nn.ReLU):
        flip = ("inplace flipped", lambda: setattr(m, "inplace", not m.inplace))
        return [flip, *_replacements(model, name, m)]
    return []


@pytest.mark.parametrize(("name", "size"), [
    ("googlenet", 96), ("inception_v3", 107), ("timm_inception_v3", 99), ("inception_resnet_v2", 107),
    ("inception_v4", 99),
])
@torch.no_grad()
def test_an_edited_network_runs_as_edited_or_is_refused(name, size):
    base = calibrated_model(name).double().eval()
    rng = random.Random(name)
    editable = [n for n, m in base.named_modules() if _edits(base, n, m)]
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outcomes = {"equal": [], "refused": [], "source fails": []}
    for _ in range(TRIALS):
        model = copy.deepcopy(base)
        where = rng.choice(editable)
        what, edit = rng.choice(_edits(model, where, model.get_submodule(where)))
        edit()
        try:
            expected = model(x)
        except RuntimeError:
            outcomes["source fails"].append((where, what))
            continue
        try:
            fused = optimize(model, backend="torch", dtype=torch.float64, device="cpu", cuda_graph=False)
            out = fused(x)
        except (TypeError, ValueError) as err:  # UnsupportedModel is a TypeError
            assert where in str(err), f"the refusal of {what} at {where} does not name the layer: {err}"
            outcomes["refused"].append((where, what))
            continue
        assert out.shape == expected.shape, (where, what)
        assert relative_l2(out, expected) < 1e-10, (where, what, relative_l2(out, expected))
        outcomes["equal"].append((where, what))
    assert outcomes["equal"], outcomes  # the draw exercised the fused path, not only refusals
