"""Launch options of the Triton kernels that need no GPU to check."""

import torch

from inception_fast.kernels.triton import pdl


def test_dependent_launch_is_off_for_cpu_tensors_and_when_switched_off(monkeypatch):
    assert not pdl.enabled(torch.empty(1))
    monkeypatch.setenv("INCEPTION_FAST_PDL", "0")
    assert not pdl.enabled(torch.empty(1))
