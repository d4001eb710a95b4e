"""Loading Inception-v4 checkpoints with timm's keys, from a file or from timm's hub entry."""

from __future__ import annotations

import argparse
import os
import socket
import urllib.parse
from contextlib import contextmanager

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


def _pretrained_hint() -> str:
    return f"timm's pretrained weights are named {' or '.join(repr(t) for t in PRETRAINED_TAGS)}"


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint into a plain state_dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"checkpoint file {what}: {path!r} ({_pretrained_hint()})")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path, device="cpu")
        else:
            # timm's train.py stores its argparse.Namespace beside the weights; allow just that.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # each format fails in its own words, some naming no file (KeyError: 101)
        kind = "safetensors" if path.endswith(".safetensors") else "PyTorch (torch.save)"
        raise ValueError(
            f"cannot read the checkpoint {path!r} as a {kind} file: it is damaged, truncated or of "
            f"another format ({type(err).__name__}: {err})"
        ) from err
    # Training checkpoints often nest the weights one level down.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state_dict, dict) and key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict):
        raise ValueError(f"the checkpoint {path!r} holds a {type(state_dict).__name__}, not a state_dict")
    return strip_wrapper_prefixes(state_dict)


HUB_PROBE_TIMEOUT_S = 3.0  # the hub client alone retries for about 50 s before it gives up


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None: HF_HUB_OFFLINE is set, or its
    host does not answer within HUB_PROBE_TIMEOUT_S."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None  # timm brings huggingface_hub; without it timm says what is missing
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err})"
    return None


@contextmanager
def _hub_offline_mode():
    """The hub client in offline mode: it reads its local cache and fails at once without it."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def load_pretrained() -> dict:
    """timm's `inception_v4.tf_in1k` weights. Offline (HF_HUB_OFFLINE, or no answer from the hub
    within seconds), only the local Hugging Face cache is tried, and the error comes at once."""
    try:
        import timm
    except ImportError as err:
        raise RuntimeError(
            "pretrained weights come from timm, which is not installed; install timm or pass "
            "a local checkpoint: inception_v4(weights='path/to/inception_v4.pth')"
        ) from err
    local_file = ("Pass a local checkpoint instead: inception_v4(weights='path/to/model.safetensors') "
                  "or a .pth file with timm's keys.")
    offline = hub_offline_reason()
    try:
        if offline is None:
            model = timm.create_model("inception_v4.tf_in1k", pretrained=True)
        else:
            with _hub_offline_mode():
                model = timm.create_model("inception_v4.tf_in1k", pretrained=True)
    except Exception as err:  # hub errors come in many types; re-raised with the cause
        if offline is not None:
            raise RuntimeError(
                f"offline ({offline}), and timm's 'inception_v4.tf_in1k' weights are not in the local "
                f"Hugging Face cache ({type(err).__name__}: {err}). {local_file}"
            ) from err
        raise RuntimeError(
            "could not download timm's 'inception_v4.tf_in1k' weights "
            f"({type(err).__name__}: {err}). {local_file}"
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
