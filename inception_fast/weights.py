"""Loading Inception-v4 checkpoints with timm's keys, from a file or from timm's hub entry."""

from __future__ import annotations

import argparse
import os

import torch

PRETRAINED_TAGS = ("tf_in1k", "inception_v4.tf_in1k")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Drop the prefixes DataParallel (`module.`) and torch.compile (`_orig_mod.`) add to keys."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        cleaned[key] = value
    return cleaned


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint into a plain state_dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    else:
        # timm's train.py stores its argparse.Namespace beside the weights; allow just that.
        with torch.serialization.safe_globals([argparse.Namespace]):
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often nest the weights one level down.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state_dict, dict) and key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    return strip_wrapper_prefixes(state_dict)


def load_pretrained() -> dict:
    """timm's `inception_v4.tf_in1k` weights; fails with a clear message when offline."""
    try:
        import timm
    except ImportError as err:
        raise RuntimeError(
            "pretrained weights come from timm, which is not installed; install timm or pass "
            "a local checkpoint: inception_v4(weights='path/to/inception_v4.pth')"
        ) from err
    try:
        model = timm.create_model("inception_v4.tf_in1k", pretrained=True)
    except Exception as err:  # hub errors come in many types; re-raised with the cause
        raise RuntimeError(
            "could not download timm's 'inception_v4.tf_in1k' weights "
            f"({type(err).__name__}: {err}). Offline, pass a local checkpoint instead: "
            "inception_v4(weights='path/to/model.safetensors') or a .pth file with timm's keys."
        ) from err
    return model.state_dict()


def load_weights(weights) -> dict:
    """Resolve the `weights=` argument of `inception_v4` to a state_dict."""
    if isinstance(weights, dict):
        return strip_wrapper_prefixes(weights)
    if isinstance(weights, str) and weights in PRETRAINED_TAGS:
        return load_pretrained()
    if isinstance(weights, (str, os.PathLike)):
        return load_checkpoint_file(weights)
    raise TypeError(
        "weights must be None, a state_dict, a checkpoint path (.pth or .safetensors) or "
        f"'tf_in1k'; got {type(weights).__name__}"
    )
