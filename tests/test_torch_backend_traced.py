"""The `torch` backend under torch.compile(fullgraph=True) on the CPU: while Dynamo traces, the
backend takes its plain ops (cuDNN's fused kernels have no fake implementation), and the
compiled block gives the eager block's result. Runs after test_torch_backend.py, whose NaN
poisoning must not leak into what Dynamo sees."""

from __future__ import annotations

import pytest
import torch

import inception_fast
from inception_fast import reference
from inception_fast.testing import randomize_batchnorm


@pytest.mark.parametrize("name", ["Mixed3a", "InceptionA"])
def test_a_compiled_block_equals_the_eager_one(name):
    torch.manual_seed(0)
    block = inception_fast.fuse_block(randomize_batchnorm(getattr(reference, name)()).eval())
    x = torch.randn(2, block.plan.in_channels, 9, 11)
    with torch.no_grad():
        want = block(x)
        got = torch.compile(block, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, want)
