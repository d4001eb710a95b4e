"""The FID network against pytorch-fid's own module: same keys, same outputs, same features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fid_helpers import checkpoint_path, pytorch_fid_network, relative_l2
from torchvision.models import inception as tv

from inception_fast.fid import BLOCK_INDEX_BY_DIM, FIDInceptionV3, build_feature_model, from_pytorch_fid
from inception_fast.fid.checkpoint import load_fid_inception

ALL_BLOCKS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def both_networks():
    """(ours, pytorch-fid's), every block returned, the same random checkpoint loaded each way."""
    return load_fid_inception(checkpoint_path(), output_blocks=ALL_BLOCKS), pytorch_fid_network(ALL_BLOCKS)


def test_module_tree_and_state_dict_keys_are_pytorch_fids(both_networks):
    ours, theirs = both_networks
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [name for name, _ in ours.named_modules()] == [name for name, _ in theirs.named_modules()]
    # The blocks keep pytorch-fid's class names too (the top module is FIDInceptionV3).
    names = [type(m).__name__ for m in ours.modules()][1:]
    assert names == [type(m).__name__ for m in theirs.modules()][1:]
    assert "FIDInceptionE_2" in names
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_every_block_output_matches_pytorch_fid(both_networks):
    ours, theirs = both_networks
    torch.manual_seed(0)
    images = torch.rand(2, 3, 37, 53)  # resized to 299x299 inside, so small inputs cost the same
    with torch.no_grad():
        mine, reference = ours(images), theirs(images)
    assert len(mine) == len(reference) == 4
    for index, (a, b) in enumerate(zip(mine, reference)):
        assert a.shape == b.shape, index
        assert relative_l2(a, b) <= 1e-5, (index, relative_l2(a, b))
        assert b.abs().mean() > 1e-2, "the random network's activations must not vanish"


@pytest.mark.parametrize("dims", sorted(BLOCK_INDEX_BY_DIM))
def test_features_match_pytorch_fids_activations(dims):
    """build_feature_model(dims) against pytorch-fid's get_activations steps on the same batch."""
    theirs = pytorch_fid_network(dims)
    ours = build_feature_model(checkpoint_path(), dims=dims, device="cpu", backend="eager")
    torch.manual_seed(dims)
    images = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        pred = theirs(images)[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
        expected = pred.squeeze(3).squeeze(2)
        features = ours(images)
    assert features.shape == (2, dims) and features.dtype == torch.float32
    assert relative_l2(features, expected) <= 1e-5


def test_a_pytorch_fid_module_is_accepted_as_the_network():
    theirs = pytorch_fid_network(2048)
    converted = from_pytorch_fid(theirs)
    assert isinstance(converted, FIDInceptionV3) and converted.output_blocks == [3]
    ours = build_feature_model(model=theirs, dims=2048, device="cpu", backend="eager")
    images = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        assert relative_l2(ours(images), theirs(images)[0].flatten(1)) <= 1e-6


def test_a_pytorch_fid_module_with_imagenet_blocks_is_refused():
    # pytorch-fid's use_fid_inception=False puts torchvision's blocks (pools that count the
    # padding) where the FID blocks go: not FID features.
    network = FIDInceptionV3([3])
    network.blocks[2][0] = tv.InceptionA(192, pool_features=32)
    with pytest.raises(ValueError, match="use_fid_inception=False"):
        from_pytorch_fid(network)


def test_dims_outside_pytorch_fids_choices_are_refused():
    with pytest.raises(ValueError, match="64, 192, 768, 2048"):
        build_feature_model(checkpoint_path(), dims=1000, device="cpu", backend="eager")
