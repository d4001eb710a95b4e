"""Host-side helpers of the packed stage format."""

import torch

from inception_fast.packing import round_to_tf32


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
