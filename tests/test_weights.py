"""`inception_v4(weights=...)`: local checkpoints with wrapper prefixes, and timm's pretrained
weights (with a clear message offline)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import inception_fast
from inception_fast import weights as weights_module


@pytest.fixture(autouse=True)
def hub_answers(monkeypatch):
    """No test asks a real host whether the hub is up; the offline tests point it at loopback."""
    monkeypatch.setattr(weights_module, "hub_offline_reason", lambda: None)


@pytest.fixture(scope="module")
def source_state(calibrated_model):
    return {k: v.clone() for k, v in calibrated_model.state_dict().items()}


def _assert_same_state(model, state):
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize(
    "suffix, prefix",
    [
        (".pth", "module."),
        (".safetensors", "_orig_mod."),
        (".pth", "_orig_mod.module."),
        (".safetensors", ""),
    ],
)
def test_checkpoint_file_round_trips(tmp_path, source_state, suffix, prefix):
    path = tmp_path / f"inception_v4{suffix}"
    _save({prefix + k: v for k, v in source_state.items()}, path)
    # Paths come as pathlib objects or strings.
    model = inception_fast.inception_v4(weights=path if prefix else str(path))
    assert not model.training
    _assert_same_state(model, source_state)


def test_training_checkpoint_with_nested_state_dict(tmp_path, source_state):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source_state.items()}}, path)
    _assert_same_state(inception_fast.inception_v4(weights=path), source_state)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        inception_fast.inception_v4(weights=path)


def test_wrong_keys_fail_strictly(tmp_path, source_state):
    path = tmp_path / "partial.pth"
    state = dict(source_state)
    del state["last_linear.bias"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"last_linear\.bias"):
        inception_fast.inception_v4(weights=path)


def test_bad_weights_argument_type():
    with pytest.raises(TypeError, match="weights must be"):
        inception_fast.inception_v4(weights=3.5)


@pytest.mark.parametrize("tag", ["tf_in1k", "inception_v4.tf_in1k"])
def test_pretrained_comes_from_timm(monkeypatch, source_state, tag):
    timm = pytest.importorskip("timm")
    create_model = timm.create_model
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        model = create_model("inception_v4", pretrained=False)
        model.load_state_dict(source_state)
        return model

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = inception_fast.inception_v4(weights=tag)
    assert calls == [("inception_v4.tf_in1k", True)]
    _assert_same_state(model, source_state)


def test_pretrained_offline_says_how_to_pass_a_file(monkeypatch):
    timm = pytest.importorskip("timm")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError) as info:
        inception_fast.inception_v4(weights="tf_in1k")
    message = str(info.value)
    assert "inception_v4.tf_in1k" in message
    assert "huggingface.co" in message  # the cause is shown
    assert "weights=" in message and ".safetensors" in message and ".pth" in message


def test_strip_wrapper_prefixes_leaves_other_keys_alone():
    state = {"module.a": 1, "_orig_mod.module.b": 2, "c.module.d": 3}
    assert weights_module.strip_wrapper_prefixes(state) == {"a": 1, "b": 2, "c.module.d": 3}


def test_timm_training_checkpoint_with_its_arguments(tmp_path, source_state):
    # timm's train.py saves the run's argparse.Namespace next to the weights.
    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(lr=0.1, model="inception_v4")
    torch.save({"epoch": 7, "arch": "inception_v4", "state_dict": source_state, "args": args}, path)
    _assert_same_state(inception_fast.inception_v4(weights=path), source_state)


@pytest.mark.parametrize("name", ["weights.pth", "weights.safetensors"])
def test_a_file_of_another_format_names_the_path(tmp_path, name):
    """Before: a text file named .pth gave `KeyError: 101`."""
    path = tmp_path / name
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError) as info:
        inception_fast.inception_v4(weights=path)
    assert str(path) in str(info.value) and "cannot read the checkpoint" in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_checkpoint_names_the_path(tmp_path, source_state, suffix):
    path = tmp_path / f"inception_v4{suffix}"
    _save(source_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        inception_fast.inception_v4(weights=path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_an_unknown_tag_lists_the_pretrained_ones():
    """Before: weights="imagenet" said "file not found" and nothing about the valid tags."""
    with pytest.raises(FileNotFoundError) as info:
        inception_fast.inception_v4(weights="imagenet")
    message = str(info.value)
    assert "'imagenet'" in message and "'tf_in1k'" in message and "'inception_v4.tf_in1k'" in message


def _pretrained_in_a_child(tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    """inception_v4(weights="tf_in1k") in a fresh process with an empty Hugging Face cache (the
    hub reads its settings once, at import)."""
    script = textwrap.dedent("""
        import inception_fast
        try:
            inception_fast.inception_v4(weights="tf_in1k")
        except RuntimeError as err:
            print("ERROR", err)
    """)
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    environment.update(HF_HOME=str(tmp_path / "hf"), **env)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=300)
    return done, time.perf_counter() - start


def test_pretrained_with_hf_hub_offline_fails_at_once_and_says_so(tmp_path):
    pytest.importorskip("timm")
    done, _seconds = _pretrained_in_a_child(tmp_path, HF_HUB_OFFLINE="1")
    assert "ERROR offline (HF_HUB_OFFLINE is set)" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "not in the local Hugging Face cache" in done.stdout and ".safetensors" in done.stdout


def test_pretrained_without_network_fails_fast(tmp_path):
    """Before: about 50 s of hub retries. Here the hub's address refuses connections at once."""
    pytest.importorskip("timm")
    done, seconds = _pretrained_in_a_child(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert "ERROR offline (127.0.0.1:9 cannot be reached" in done.stdout, done.stdout + done.stderr[-2000:]
    assert seconds < 30, seconds
