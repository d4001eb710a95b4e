"""Folding a conv chain (BatchNorm with the module's own eps, conv bias, scale) into one weight
and bias, the stacking of sibling convs, and the avg-pool rewrite's bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inception_fast
from inception_fast import reference
from inception_fast.compiler import CompiledBlock, compile_model
from inception_fast.compiler.layers import ConvLayer
from inception_fast.folding import fold_conv
from inception_fast.plan import Conv, Pool
from inception_fast.testing import randomize_batchnorm, relative_l2


def _conv_layer(module) -> ConvLayer:
    """The one fused conv chain of a small module, as the compiler reads it."""
    from inception_fast.compiler.tracing import read_layers, trace

    layers, _ = read_layers(module, trace(module))
    (layer,) = [la for la in layers if isinstance(la, ConvLayer)]
    return layer


def _conv_bn_relu(cin=8, cout=6, kernel=3, eps=1e-3, **kw):
    module = reference.ConvBnRelu(cin, cout, kernel, **kw)
    module.bn.eps = eps
    return randomize_batchnorm(module).double().eval()


@pytest.mark.parametrize("eps", [1e-3, 0.25])
def test_fold_conv_bn_matches_conv_then_batchnorm(eps):
    module = _conv_bn_relu(eps=eps, padding=1)
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    weight, bias = fold_conv(_conv_layer(module))
    with torch.no_grad():
        expected = module.bn(module.conv(x))
    assert weight.dtype == bias.dtype == torch.float64
    assert relative_l2(F.conv2d(x, weight, bias, padding=1), expected) < 1e-13


def test_fold_uses_the_modules_eps():
    module = _conv_bn_relu(eps=1e-3)
    module.bn.running_var.fill_(1e-3)  # eps is as large as the variance: a wrong eps shows
    scale = module.bn.weight.detach() / torch.sqrt(module.bn.running_var + 1e-3)
    weight, _ = fold_conv(_conv_layer(module))
    torch.testing.assert_close(weight, module.conv.weight.detach() * scale[:, None, None, None])
    wrong = module.bn.weight.detach() / torch.sqrt(module.bn.running_var + 1e-5)
    assert not torch.allclose(weight, module.conv.weight.detach() * wrong[:, None, None, None])


def test_fold_without_affine_parameters():
    module = reference.ConvBnRelu(4, 3, 1)
    module.bn = nn.BatchNorm2d(3, eps=1e-3, affine=False)
    module.bn.running_mean.normal_()
    module.bn.running_var.uniform_(0.5, 2.0)
    module.eval()
    x = torch.randn(1, 4, 3, 3)
    weight, bias = fold_conv(_conv_layer(module))
    with torch.no_grad():
        expected = module.bn(module.conv(x))
    torch.testing.assert_close(F.conv2d(x, weight.float(), bias.float()), expected)


class _BiasScale(nn.Module):
    """conv with bias -> BatchNorm -> * 0.17 (the order Inception-ResNet's scale comes in)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4, eps=0.01)

    def forward(self, x):
        return self.bn(self.conv(x)) * 0.17


def test_fold_conv_bias_batchnorm_and_scale():
    module = randomize_batchnorm(_BiasScale()).double().eval()
    layer = _conv_layer(module)
    assert layer.scale == 0.17
    weight, bias = fold_conv(layer)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        assert relative_l2(F.conv2d(x, weight, bias, padding=1), module(x)) < 1e-13


def _block_plan_and_params(block):
    (step,) = compile_model(block).steps
    assert isinstance(step, CompiledBlock)
    return step.plan, step.params


@pytest.mark.parametrize(
    "name, sources",
    [
        ("InceptionA", ("branch0", "branch1.0", "branch2.0", "branch3.1")),
        ("InceptionB", ("branch0", "branch1.0", "branch2.0", "branch3.1")),
        ("InceptionC", ("branch1_0", "branch2_0", "branch0", "branch3.1")),
        ("ReductionB", ("branch0.0", "branch1.0")),
        ("Mixed4a", ("branch0.0", "branch1.0")),
    ],
)
def test_stage1_siblings_are_stacked_in_order(name, sources):
    block = randomize_batchnorm(getattr(reference, name)()).double().eval()
    plan, params = _block_plan_and_params(block)
    stacked = plan.stages[0][0]
    assert isinstance(stacked, Conv) and stacked.sources == tuple(f"{s}.conv" for s in sources)
    expected = torch.cat([fold_conv(_conv_layer(block.get_submodule(s)))[0] for s in sources])
    assert torch.equal(params[0][0], expected)


@pytest.mark.parametrize("name", ["InceptionA", "InceptionB", "InceptionC"])
def test_pool_branch_bias_moves_to_the_avg_pool_op(name):
    block = randomize_batchnorm(getattr(reference, name)()).double().eval()
    plan, params = _block_plan_and_params(block)
    pool_index = next(i for i, op in enumerate(plan.ops) if isinstance(op, Pool) and op.bias)
    _, expected_bias = fold_conv(_conv_layer(block.branch3[1]))
    assert torch.equal(params[pool_index], expected_bias)
    _, stacked_bias = params[0]
    pool_columns = plan.ops[pool_index].dst.channels
    assert torch.equal(stacked_bias[-pool_columns:], torch.zeros(pool_columns, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_folded_weights_are_rounded_once_from_float64(dtype):
    block = randomize_batchnorm(reference.InceptionA()).eval()
    fused = inception_fast.fuse_block(block).to(dtype)
    _, params = _block_plan_and_params(block)
    weight, _ = fused.op_params(0)
    assert weight.dtype == dtype
    assert torch.equal(weight, params[0][0].to(dtype))


def test_timm_and_reference_blocks_fold_alike():
    timm = pytest.importorskip("timm")
    model = timm.create_model("inception_v4", pretrained=False).eval()
    timm_block = randomize_batchnorm(model.features[6])
    ours = reference.InceptionA()
    ours.load_state_dict(timm_block.state_dict())
    plan_a, a = _block_plan_and_params(timm_block)
    plan_b, b = _block_plan_and_params(ours.eval())
    assert plan_a == plan_b
    for x, y in zip(a, b):
        for p, q in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            assert (p is None and q is None) or torch.equal(p, q)


def test_the_parameters_fold_on_the_device_asked_for():
    # optimize(model, device=...) folds on the target device (a GPU folds Inception-v4 in a
    # fraction of the CPU's time); the meta device shows every parameter goes there.
    model = reference.inception_v4().eval()
    compiled = compile_model(model, torch.device("meta"))
    blocks = [step for step in compiled.steps if isinstance(step, CompiledBlock)]
    tensors = [t for block in blocks for param in block.params if param is not None
               for t in (param if isinstance(param, tuple) else (param,))]
    assert tensors and all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors)
    assert next(model.parameters()).device.type == "cpu"  # the source model stays where it was
