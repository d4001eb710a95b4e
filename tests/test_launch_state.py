"""What the Triton backends keep beside a packed table (kernels/triton/launch_state.py): the
TF32 rounding of the weights, made once per table and shared where tables share weights."""

import torch

from inception_fast import packing as pk
from inception_fast.kernels.triton.launch_state import StageLaunchState, round_to_tf32
from inception_fast.modules import fuse_block
from inception_fast.reference import InceptionA
from inception_fast.testing import randomize_batchnorm


def test_round_to_tf32_rounds_to_nearest_with_ties_away_from_zero():
    ulp = 2.0**-10  # TF32 keeps 10 mantissa bits
    x = torch.tensor([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 4, 1 + 3 * ulp / 4, 3.0, 0.0])
    expected = torch.tensor([1 + ulp, -(1 + ulp), 1.0, 1 + ulp, 3.0, 0.0])
    assert torch.equal(round_to_tf32(x), expected)


def test_round_to_tf32_error_is_at_most_half_an_ulp_and_keeps_layout():
    x = torch.randn(4, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    rounded = round_to_tf32(x)
    assert rounded.stride() == x.stride()
    assert (rounded.view(torch.int32) & 0x1FFF).eq(0).all()
    half_ulp = x.abs() * 2.0**-11  # half a TF32 ulp, relative to the value
    assert ((rounded - x).abs() <= half_ulp * (1 + 2**-10)).all()
    assert not torch.equal(rounded, x)


def test_weights_are_rounded_once_and_the_table_keeps_only_the_format():
    torch.manual_seed(0)
    fused = fuse_block(randomize_batchnorm(InceptionA()).eval())
    stage = pk.pack_block(fused, "cpu", torch.float32)[0]
    state = StageLaunchState()
    assert state.weights_for(stage, False) is stage.weights and state.tf32_weights is None
    rounded = state.weights_for(stage, True)
    assert torch.equal(rounded, round_to_tf32(stage.weights)) and not torch.equal(rounded, stage.weights)
    assert state.weights_for(stage, True) is rounded  # one rounded copy, kept
    assert not hasattr(stage, "tf32_weights") and not hasattr(stage, "configs")


def test_a_rounding_made_inside_a_capture_is_not_kept(monkeypatch):
    """Made in a CUDA graph capture, the rounded copy holds values only once that graph
    replays: it serves that capture and is not kept for eager calls or other captures."""
    from inception_fast.kernels.triton import launch_state

    torch.manual_seed(0)
    stage = pk.pack_block(fuse_block(randomize_batchnorm(InceptionA()).eval()), "cpu", torch.float32)[0]
    state = StageLaunchState()
    monkeypatch.setattr(launch_state, "capturing", lambda: True)
    assert torch.equal(state.weights_for(stage, True), round_to_tf32(stage.weights))
    assert state.tf32_weights is None
