"""The reference model is timm's Inception-v4: same keys, same shapes, same logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inception_fast
from inception_fast import reference
from inception_fast.testing import random_images, relative_l2

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_model():
    return timm.create_model("inception_v4", pretrained=False).eval()


def test_state_dict_keys_and_shapes_equal_timm(timm_model):
    ours = inception_fast.inception_v4().state_dict()
    theirs = timm_model.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key


def test_parameter_count_is_inception_v4():
    count = sum(p.numel() for p in inception_fast.inception_v4().parameters())
    assert count == pytest.approx(42.68e6, rel=1e-3)


def test_matches_timm_in_float64_after_loading_its_state_dict(timm_model, calibrated_model):
    # Non-trivial BN statistics come from the calibrated network; timm gets them, we load timm's.
    timm_model.load_state_dict(calibrated_model.state_dict(), strict=True)
    ours = inception_fast.inception_v4()
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    ours.double()
    timm64 = timm_model.double()
    for batch, size in ((1, 299), (3, 107)):
        x = random_images(batch, size, dtype=torch.float64)
        with torch.no_grad():
            expected, got = timm64(x), ours(x)
        assert got.shape == expected.shape == (batch, 1000)
        assert relative_l2(got, expected) < 1e-10, (batch, size)
        assert expected.std() > 0.1  # a calibrated network: logits are not all the same


def test_returns_eval_mode_with_num_classes():
    model = inception_fast.inception_v4(num_classes=10)
    assert not model.training
    assert model.last_linear.out_features == 10
    with torch.no_grad():
        assert model(random_images(2, 75)).shape == (2, 10)


def test_every_conv_is_followed_by_batchnorm_with_eps_1e_3():
    model = inception_fast.inception_v4()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 149
    assert all(bn.eps == 1e-3 for bn in bns)
    assert all(conv.bias is None for conv in convs)


def test_avg_pools_exclude_padding():
    pools = [m for m in inception_fast.inception_v4().modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 4 + 7 + 3
    assert all(not p.count_include_pad for p in pools)


def test_default_cfg_sits_beside_the_model(timm_model):
    cfg = inception_fast.DEFAULT_CFG
    assert inception_fast.InceptionV4.default_cfg is cfg
    assert inception_fast.inception_v4().default_cfg is cfg
    assert cfg["input_size"] == (3, 299, 299)
    assert cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.875
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    for key in ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "pool_size"):
        assert cfg[key] == timm_model.pretrained_cfg[key], key


def test_smallest_input_is_75(calibrated_model):
    with torch.no_grad():
        assert calibrated_model(random_images(1, 75)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            calibrated_model(random_images(1, 74))


def test_module_names_read_like_timm():
    names = [type(block).__name__ for block in reference.InceptionV4().features]
    assert names[3:] == (
        ["Mixed3a", "Mixed4a", "Mixed5a"] + ["InceptionA"] * 4 + ["ReductionA"]
        + ["InceptionB"] * 7 + ["ReductionB"] + ["InceptionC"] * 3
    )
