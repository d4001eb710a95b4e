"""The Inception family through `optimize()` and `fuse_block()` on the `torch` backend (the
executable specification of the kernels): GoogLeNet, Inception-v3 (torchvision and timm),
Inception-ResNet-v2 and Inception-v4 equal their source models in float64, at odd batches and
sizes; timm's model API on every fused model; Inception-V1 modules as drop-in fused blocks.
The kernel backends run the same plans on the GPU (test_gpu_family.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import inception_fast
from inception_fast import architectures
from inception_fast.testing import calibrated_model, randomize_batchnorm, relative_l2

# name -> (constructor kwargs, input sizes to check at (batch, H, W))
FAMILY = {
    "googlenet": ({"transform_input": True}, [(1, 224, 224), (3, 97, 113)]),
    "inception_v3": ({"transform_input": True}, [(3, 107, 101)]),
    "timm_inception_v3": ({}, [(1, 139, 139)]),
    "inception_resnet_v2": ({}, [(2, 107, 117)]),
}


@pytest.fixture(scope="module")
def models64():
    cache = {}

    def get(name):
        if name not in cache:
            kwargs = FAMILY[name][0]
            model = calibrated_model(name, seed=1, image_size=139, **kwargs).double()
            cache[name] = (model, inception_fast.optimize(model, backend="torch"))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAMILY))
@torch.no_grad()
def test_model_equals_its_source_in_float64(models64, name):
    model, fused = models64(name)
    for batch, h, w in FAMILY[name][1]:
        x = torch.randn(batch, 3, h, w, dtype=torch.float64)
        ref = model(x)
        out = fused(x)
        assert out.shape == ref.shape == (batch, 1000)
        assert relative_l2(out, ref) < 1e-10, (name, batch, h, w)
        assert ref.std() > 1e-3  # a live network, not a constant


@pytest.mark.parametrize("transform_input", [False, True])
@torch.no_grad()
def test_googlenet_transform_input_both_ways(transform_input):
    model = calibrated_model("googlenet", seed=2, image_size=96, transform_input=transform_input).double()
    fused = inception_fast.optimize(model, backend="torch")
    assert isinstance(fused.steps[0], inception_fast.FusedBlock) != transform_input  # a PyTorch step first
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64)
    assert relative_l2(fused(x), model(x)) < 1e-10


@pytest.mark.parametrize("name", ["googlenet", "inception_resnet_v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.no_grad()
def test_low_precision_within_twice_eager_error(models64, name, dtype):
    model64, _ = models64(name)
    model = copy.deepcopy(model64).to(dtype)
    fused = inception_fast.optimize(model64, backend="torch", dtype=dtype)
    x = torch.randn(2, 3, 99, 99, dtype=torch.float64)
    ref = model64(x)
    eager_err = relative_l2(model(x.to(dtype)), ref)
    fused_err = relative_l2(fused(x.to(dtype)), ref)
    assert fused_err <= 2 * eager_err + 1e-6, (fused_err, eager_err)


@pytest.mark.parametrize("name", list(FAMILY))
@torch.no_grad()
def test_timm_model_api(models64, name):
    model, fused = models64(name)
    features = 1024 if name == "googlenet" else 1536 if name == "inception_resnet_v2" else 2048
    assert fused.num_features == features and fused.num_classes == 1000
    cfg = fused.default_cfg
    assert cfg["input_size"][-1] == (224 if name == "googlenet" else 299) and "mean" in cfg
    x = torch.randn(2, 3, 107, 113, dtype=torch.float64)
    maps = fused.forward_features(x)
    assert maps.shape[:2] == (2, features) and maps.dim() == 4
    pooled = fused.forward_head(maps, pre_logits=True)
    torch.testing.assert_close(pooled, maps.mean((2, 3)), rtol=1e-12, atol=1e-12)
    assert relative_l2(fused.forward_head(maps), model(x)) < 1e-10


def test_inception_v4_keeps_timm_api_and_default_cfg(calibrated_model64):
    fused = inception_fast.optimize(calibrated_model64, backend="torch")
    x = torch.randn(1, 3, 107, 107, dtype=torch.float64)
    with torch.no_grad():
        pooled = fused.forward_head(fused.forward_features(x), pre_logits=True)
        ref = calibrated_model64.forward_features(x).mean((2, 3))
    assert fused.num_features == 1536 and fused.default_cfg == inception_fast.DEFAULT_CFG
    assert relative_l2(pooled, ref) < 1e-10


# --- Inception-V1 modules as drop-in fused blocks -------------------------------------------------


@pytest.mark.parametrize(
    "widths",
    [(192, 64, 96, 128, 16, 32, 32), (480, 192, 96, 208, 16, 48, 64), (40, 8, 16, 24, 8, 8, 16)],
    ids=["3a", "4a", "narrow"],
)
@torch.no_grad()
def test_torchvision_googlenet_inception_block_at_any_widths(widths):
    from torchvision.models.googlenet import Inception

    torch.manual_seed(sum(widths))
    block = randomize_batchnorm(Inception(*widths)).double().eval()
    fused = inception_fast.fuse_block(block)
    assert len(fused.plan.stages) == 2
    for batch, h, w in [(1, 14, 14), (3, 7, 9)]:
        x = torch.randn(batch, widths[0], h, w, dtype=torch.float64)
        assert relative_l2(fused(x), block(x)) < 1e-10


class InceptionV1(nn.Module):
    """The Inception-V1 module of the paper, with a true 5x5 branch, written by a user."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool):
        super().__init__()

        def conv(i, o, k):
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.b1 = conv(cin, c1, 1)
        self.b3 = nn.Sequential(conv(cin, c3r, 1), conv(c3r, c3, 3))
        self.b5 = nn.Sequential(conv(cin, c5r, 1), conv(c5r, c5, 5))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, pool, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


@torch.no_grad()
def test_inception_v1_module_with_a_true_5x5_branch():
    torch.manual_seed(7)
    block = randomize_batchnorm(InceptionV1(64, 16, 24, 32, 8, 16, 16)).double().eval()
    fused = inception_fast.fuse_block(block)
    kernels = sorted(op.kernel for op in fused.plan.stages[1])
    assert kernels == [(1, 1), (3, 3), (5, 5)]
    stacked = fused.plan.stages[0][0]
    assert stacked.out_channels == 16 + 24 + 8  # the three 1x1 convs reading the input: one GEMM
    x = torch.randn(3, 64, 11, 9, dtype=torch.float64)
    assert relative_l2(fused(x), block(x)) < 1e-10
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1).double(), nn.ReLU(), fused).eval()
    ref_net = nn.Sequential(net[0], net[1], block).eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert relative_l2(net(x), ref_net(x)) < 1e-10


@torch.no_grad()
def test_inception_resnet_block_as_a_fused_block():
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    model = timm.create_model("inception_resnet_v2", pretrained=False)
    for block in (model.repeat[0], model.repeat_1[0], model.repeat_2[0], model.block8):
        block = randomize_batchnorm(block).double().eval()
        fused = inception_fast.fuse_block(block)
        x = torch.randn(2, fused.plan.in_channels, 5, 6, dtype=torch.float64)
        assert relative_l2(fused(x), block(x)) < 1e-10, type(block).__name__


# --- the weights are a snapshot; refresh() and state -----------------------------------------------


@torch.no_grad()
def test_fused_model_is_a_snapshot_until_refresh():
    model = calibrated_model("googlenet", seed=4, image_size=64).double()
    fused = inception_fast.optimize(model, backend="torch")
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    before = fused(x)
    model.inception3a.branch1.bn.running_mean += 0.5
    model.fc.bias += 1.0
    assert torch.equal(fused(x), before)  # editing the source changes nothing...
    assert fused.refresh(model) is fused
    assert relative_l2(fused(x), model(x)) < 1e-10  # ...until refresh()
    other = architectures.create("inception_v3")
    with pytest.raises(ValueError, match="same structure"):
        fused.refresh(other)


def test_state_dict_round_trips_the_folded_weights():
    model = calibrated_model("googlenet", seed=5, image_size=64)
    fused = inception_fast.optimize(model, backend="torch")
    again = inception_fast.optimize(architectures.create("googlenet"), backend="torch")
    again.load_state_dict(fused.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), fused(x), rtol=0, atol=0)
