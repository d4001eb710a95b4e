"""pytorch-fid's checkpoint file: the formats that load, and the errors for those that do not."""

from __future__ import annotations

import pytest
import torch
from fid_helpers import checkpoint_path, pytorch_fid_network

from inception_fast.fid import CHECKPOINT_FILENAME, build_feature_model, load_fid_inception
from inception_fast.fid.checkpoint import CHECKPOINT_URL, default_checkpoint_path
from inception_fast.fid.network import fid_inception3


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_file_says_nothing_is_downloaded_and_where_the_release_is(tmp_path):
    missing = tmp_path / CHECKPOINT_FILENAME
    with pytest.raises(FileNotFoundError) as info:
        load_fid_inception(missing)
    message = str(info.value)
    assert str(missing) in message and "does not download" in message
    assert CHECKPOINT_URL in message and "--weights" in message


def test_no_weights_looks_where_pytorch_fid_downloads_to(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in its download folder"):
        load_fid_inception(None)
    cached = default_checkpoint_path()
    assert cached == tmp_path / "hub" / "checkpoints" / CHECKPOINT_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(checkpoint_path().read_bytes())
    assert _same_weights(load_fid_inception(None), load_fid_inception(checkpoint_path()))


def test_a_folder_and_a_file_of_another_type_are_refused_by_name(tmp_path):
    with pytest.raises(IsADirectoryError, match="must be a file"):
        load_fid_inception(tmp_path)
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        load_fid_inception(text)
    assert str(text) in str(info.value)


def test_a_checkpoint_of_another_network_is_refused_with_its_keys(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, other)
    with pytest.raises(ValueError, match=r"missing keys: Conv2d_1a_3x3\.conv\.weight") as info:
        load_fid_inception(other)
    assert "unexpected keys: conv.weight" in str(info.value) and str(other) in str(info.value)


def test_torchvisions_imagenet_inception_is_refused_with_a_hint(tmp_path):
    # torchvision's ImageNet Inception-v3: 1000 classes and an auxiliary classifier.
    from torchvision.models import inception_v3

    imagenet = tmp_path / "inception_v3_google.pth"
    torch.save(inception_v3(weights=None, init_weights=False, aux_logits=True).state_dict(), imagenet)
    with pytest.raises(ValueError, match=r"AuxLogits.*torchvision's ImageNet"):
        load_fid_inception(imagenet)
    state = torch.load(imagenet, weights_only=True)
    no_aux = tmp_path / "no_aux.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("AuxLogits.")}, no_aux)
    with pytest.raises(ValueError, match=r"wrong shape \(1000 classes"):
        load_fid_inception(no_aux)


def test_wrapper_prefixes_and_batch_counters_are_accepted(tmp_path):
    state = torch.load(checkpoint_path(), weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in state)  # as in pytorch-fid's release
    full = fid_inception3().state_dict()
    with_counters = {**state, **{k: v for k, v in full.items() if k.endswith("num_batches_tracked")}}
    wrapped = tmp_path / "wrapped.pth"
    torch.save({f"module.{k}": v for k, v in with_counters.items()}, wrapped)
    assert _same_weights(load_fid_inception(wrapped), load_fid_inception(checkpoint_path()))


def test_a_saved_pytorch_fid_inceptionv3_state_dict_loads(tmp_path):
    saved = tmp_path / "inceptionv3.pth"
    torch.save(pytorch_fid_network(2048).state_dict(), saved)
    assert _same_weights(load_fid_inception(saved, dims=64), load_fid_inception(checkpoint_path(), dims=64))
    partial = tmp_path / "inceptionv3-64.pth"
    torch.save(pytorch_fid_network(64).state_dict(), partial)  # holds block 0 only
    with pytest.raises(ValueError, match="block 3 is needed"):
        load_fid_inception(partial, dims=2048)


def test_weights_and_a_model_together_are_ambiguous():
    with pytest.raises(ValueError, match="either weights"):
        build_feature_model(checkpoint_path(), model=pytorch_fid_network(64), dims=64, device="cpu",
                            backend="eager")
