"""BatchNorm folding (with the module's own eps) and the stacking of sibling convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inception_fast import folding, modules, reference
from inception_fast import plan as plans
from inception_fast.testing import randomize_batchnorm, relative_l2


def _conv_bn_relu(cin=8, cout=6, kernel=3, eps=1e-3, **kw):
    module = reference.ConvBnRelu(cin, cout, kernel, **kw)
    module.bn.eps = eps
    return randomize_batchnorm(module).double().eval()


@pytest.mark.parametrize("eps", [1e-3, 0.25])
def test_fold_conv_bn_matches_conv_then_batchnorm(eps):
    module = _conv_bn_relu(eps=eps, padding=1)
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    folded = folding.fold_conv_bn(module)
    with torch.no_grad():
        expected = module.bn(module.conv(x))
    got = F.conv2d(x, folded.weight, folded.bias, padding=1)
    assert folded.weight.dtype == folded.bias.dtype == torch.float64
    assert relative_l2(got, expected) < 1e-13


def test_fold_uses_the_modules_eps():
    module = _conv_bn_relu(eps=1e-3)
    module.bn.running_var.fill_(1e-3)  # eps is as large as the variance: a wrong eps shows
    scale = module.bn.weight.detach() / torch.sqrt(module.bn.running_var + 1e-3)
    folded = folding.fold_conv_bn(module)
    torch.testing.assert_close(folded.weight, module.conv.weight.detach() * scale[:, None, None, None])
    wrong = module.bn.weight.detach() / torch.sqrt(module.bn.running_var + 1e-5)
    assert not torch.allclose(folded.weight, module.conv.weight.detach() * wrong[:, None, None, None])


def test_fold_without_affine_parameters():
    module = reference.ConvBnRelu(4, 3, 1)
    module.bn = nn.BatchNorm2d(3, eps=1e-3, affine=False)
    module.bn.running_mean.normal_()
    module.bn.running_var.uniform_(0.5, 2.0)
    module.eval()
    x = torch.randn(1, 4, 3, 3)
    folded = folding.fold_conv_bn(module)
    with torch.no_grad():
        expected = module.bn(module.conv(x))
    torch.testing.assert_close(F.conv2d(x, folded.weight.float(), folded.bias.float()), expected)


@pytest.mark.parametrize(
    "plan, sources",
    [
        (plans.INCEPTION_A, ("branch0", "branch1.0", "branch2.0", "branch3.1")),
        (plans.INCEPTION_B, ("branch0", "branch1.0", "branch2.0", "branch3.1")),
        (plans.INCEPTION_C, ("branch0", "branch1_0", "branch2_0", "branch3.1")),
        (plans.REDUCTION_B, ("branch0.0", "branch1.0")),
        (plans.MIXED_4A, ("branch0.0", "branch1.0")),
    ],
    ids=["InceptionA", "InceptionB", "InceptionC", "ReductionB", "Mixed4a"],
)
def test_stage1_siblings_are_stacked_in_order(plan, sources):
    block = randomize_batchnorm(getattr(reference, plan.name)()).eval()
    params = folding.fold_block(block, plan)
    stage1 = plan.ops[0]
    assert stage1.sources == sources
    expected = [folding.fold_conv_bn(block.get_submodule(path)) for path in sources]
    assert torch.equal(params[0].weight, torch.cat([f.weight for f in expected]))
    assert torch.equal(params[0].bias, torch.cat([f.bias for f in expected]))
    assert params[0].weight.shape == (stage1.out_channels, plan.in_channels, 1, 1)


POOL_PLANS = [plans.INCEPTION_A, plans.INCEPTION_B, plans.INCEPTION_C]


@pytest.mark.parametrize("plan", POOL_PLANS, ids=lambda p: p.name)
def test_pool_branch_bias_moves_to_the_avg_pool_op(plan):
    block = randomize_batchnorm(getattr(reference, plan.name)()).eval()
    fused = modules.FUSED_BY_NAME[plan.name].from_reference(block)
    pool_index = next(i for i, op in enumerate(plan.ops) if isinstance(op, plans.AvgPoolBiasRelu))
    pool_bias = folding.fold_conv_bn(block.get_submodule("branch3.1")).bias
    torch.testing.assert_close(fused.op_params(pool_index)[1], pool_bias.float())
    # ... and the stacked GEMM leaves those raw columns without bias.
    _, bias = fused.op_params(0)
    raw = plan.ops[0].writes[-1]
    assert raw.raw
    assert torch.count_nonzero(bias[-raw.dst.channels :]) == 0
    assert torch.count_nonzero(bias[: -raw.dst.channels]) == bias.numel() - raw.dst.channels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_folded_weights_are_rounded_once_from_float64(dtype):
    block = randomize_batchnorm(reference.InceptionA()).eval()
    fused = modules.FusedInceptionA.from_reference(block, dtype=dtype)
    exact = folding.fold_block(block, plans.INCEPTION_A)
    weight, _ = fused.op_params(0)
    assert weight.dtype == dtype
    assert torch.equal(weight, exact[0].weight.to(dtype))


def test_folds_timm_blocks():
    timm = pytest.importorskip("timm")
    model = timm.create_model("inception_v4", pretrained=False).eval()
    timm_block = randomize_batchnorm(model.features[6])
    ours = reference.InceptionA()
    ours.load_state_dict(timm_block.state_dict())
    a = folding.fold_block(timm_block, plans.INCEPTION_A)
    b = folding.fold_block(ours.eval(), plans.INCEPTION_A)
    for x, y in zip(a, b):
        if isinstance(x, folding.FoldedConv):
            assert torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias)
        elif x is not None:
            assert torch.equal(x, y)


def test_rejects_a_conv_with_bias():
    module = reference.ConvBnRelu(4, 3, 1)
    module.conv = nn.Conv2d(4, 3, 1, bias=True)
    with pytest.raises(TypeError, match="bias-free"):
        folding.fold_conv_bn(module, "branch0")


def test_rejects_a_non_relu_activation():
    module = reference.ConvBnRelu(4, 3, 1)
    module.bn.act = nn.GELU()
    with pytest.raises(TypeError, match="GELU"):
        folding.fold_conv_bn(module, "branch0")


def test_rejects_geometry_unlike_the_plan():
    block = reference.InceptionA().eval()
    block.branch1[1].conv = nn.Conv2d(64, 96, 5, padding=2, bias=False)
    with pytest.raises(TypeError, match=r"branch1\.1.*plan expects"):
        folding.fold_block(block, plans.INCEPTION_A)
