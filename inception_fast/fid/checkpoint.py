"""pytorch-fid's checkpoint file: finding it, reading it, and building the FID network from it.

The file pytorch-fid downloads on first use, `pt_inception-2015-12-05-6726825d.pth`, holds the
`state_dict` of `fid_inception3()`'s module tree (keys `Conv2d_1a_3x3.conv.weight` ...
`Mixed_7c.branch_pool.bn.running_var`, `fc.weight`, `fc.bias`). A `state_dict` of pytorch-fid's
`InceptionV3` module (keys `blocks.0.0.conv.weight` ...) is accepted too. Nothing is ever
downloaded here.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .dims import block_index
from .network import FIDInceptionV3, fid_inception3

CHECKPOINT_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
CHECKPOINT_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{CHECKPOINT_FILENAME}"
_INCEPTION_V3_PREFIX = "blocks."
# The parts of a model-wrapper's keys that are not the model's own.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def default_checkpoint_path() -> Path:
    """Where pytorch-fid's own download lands (torch hub's checkpoint folder, `TORCH_HOME`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_FILENAME


def find_checkpoint(path: str | os.PathLike | None) -> Path:
    """`path`, or pytorch-fid's download when `path` is None; an error that says what to do
    when the file is not there."""
    how_to_get = (
        f"inception_fast does not download it (it runs offline). Download {CHECKPOINT_URL} on a machine "
        f"with network access (or run pytorch-fid once, which saves it as {default_checkpoint_path()}), "
        f"then pass it with --weights FILE (Python: weights=FILE)."
    )
    if path is None:
        candidate = default_checkpoint_path()
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(
            f"no FID weights given and pytorch-fid's checkpoint {CHECKPOINT_FILENAME} is not in its download "
            f"folder ({candidate}). {how_to_get}"
        )
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FID weights file not found: {path}. {how_to_get}")
    if path.is_dir():
        raise IsADirectoryError(f"FID weights must be a file ({CHECKPOINT_FILENAME}), got the folder {path}")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, with `module.`/`_orig_mod.` prefixes removed."""
    path = Path(path)
    try:
        # weights_only: a checkpoint is data; never run code from a file to read it.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint file that can be read safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); expected pytorch-fid's {CHECKPOINT_FILENAME}"
        ) from err
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state_dict (a dict of tensors); got "
                         f"{type(loaded).__name__}")
    state = {}
    for key, value in loaded.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def _describe_mismatch(path: Path, missing: list[str], unexpected: list[str]) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = [f"{path} is not pytorch-fid's FID Inception checkpoint ({CHECKPOINT_FILENAME})"]
    if any(key.startswith("AuxLogits.") for key in unexpected):
        parts.append("it has AuxLogits weights, as torchvision's ImageNet Inception-v3 does: FID needs the "
                     "TF-ported FID weights instead")
    if missing:
        parts.append(f"missing keys: {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {some(unexpected)}")
    return "; ".join(parts)


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    # Checkpoints saved before BatchNorm counted its batches have no num_batches_tracked (unused
    # in eval mode).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(_describe_mismatch(path, missing, unexpected))
    wrong = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        imagenet = any(k.startswith("fc.") for k in wrong)
        hint = " (1000 classes: torchvision's ImageNet weights?)" if imagenet else ""
        raise ValueError(f"{path}: tensors of the wrong shape{hint}: " + "; ".join(wrong[:5]))
    module.load_state_dict(state, strict=False)


def load_fid_inception(
    weights: str | os.PathLike | None = None,
    dims: int | None = None,
    output_blocks=None,
    resize_input: bool = True,
    normalize_input: bool = True,
) -> FIDInceptionV3:
    """The FID network with pytorch-fid's weights, in eval mode on the CPU.

    Args:
        weights: pytorch-fid's checkpoint file (default: pytorch-fid's own download, if present).
        dims: the feature size to return (64, 192, 768 or 2048); or give `output_blocks`.
    """
    if output_blocks is None:
        output_blocks = (block_index(dims if dims is not None else 2048),)
    path = find_checkpoint(weights)
    state = read_state_dict(path)
    if any(key.startswith(_INCEPTION_V3_PREFIX) for key in state):
        model = FIDInceptionV3(output_blocks, resize_input, normalize_input)
        present_blocks = {int(key.split(".")[1]) for key in state if key.startswith(_INCEPTION_V3_PREFIX)}
        # A saved InceptionV3 holds the blocks up to its own last output block only.
        if max(present_blocks) < model.last_needed_block:
            raise ValueError(
                f"{path} holds pytorch-fid InceptionV3 blocks {sorted(present_blocks)} only; block "
                f"{model.last_needed_block} is needed (save it from InceptionV3([3]) for every dims)"
            )
        state = {k: v for k, v in state.items()
                 if not k.startswith(_INCEPTION_V3_PREFIX) or int(k.split(".")[1]) <= model.last_needed_block}
        _load_strict(model, state, path)
    else:
        inception = fid_inception3()
        _load_strict(inception, state, path)
        model = FIDInceptionV3(output_blocks, resize_input, normalize_input, inception=inception)
    return model.eval()


def from_pytorch_fid(module: torch.nn.Module, dims: int | None = None) -> FIDInceptionV3:
    """Our `FIDInceptionV3` with the weights and settings of pytorch-fid's `InceptionV3` module
    (built with `use_fid_inception=True`; the keys are the same). `dims` picks the output block
    (default: the module's first)."""
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not hasattr(module, "output_blocks"):
        raise TypeError(f"expected pytorch-fid's InceptionV3 module, got {type(module).__name__}")
    if len(blocks) > 2 and type(blocks[2][0]).__name__ != "FIDInceptionA":
        raise ValueError(
            "this InceptionV3 was built with use_fid_inception=False (torchvision's ImageNet network, "
            "whose pools count the padding): its features are not FID features. Build it with "
            "use_fid_inception=True"
        )
    output_blocks = [block_index(dims)] if dims is not None else list(module.output_blocks)
    if max(output_blocks) >= len(blocks):
        raise ValueError(f"dims={dims} needs block {max(output_blocks)}, which this InceptionV3 does not "
                         f"have (its output_blocks are {module.output_blocks})")
    model = FIDInceptionV3(output_blocks, module.resize_input, module.normalize_input)
    state = {k: v for k, v in module.state_dict().items() if int(k.split(".")[1]) <= model.last_needed_block}
    model.load_state_dict(state)
    return model.eval()
