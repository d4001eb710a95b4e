"""The Python API: features, statistics and FID of folders of images (or of tensors).

    import inception_fast.fid as fid
    value = fid.compute_fid("real/", "generated/", weights="pt_inception-2015-12-05-6726825d.pth")
    features = fid.compute_features("generated/", weights=..., dims=2048)   # [N, 2048] float64
    mu, sigma = fid.compute_statistics("real/", weights=...)
    fid.save_statistics("real.npz", mu, sigma)                               # pytorch-fid's format

Under torchrun (with the process group initialised, as the `inception-fast fid` command does),
every rank takes a share of the files and gets the features of all of them (a tensor of images
is not split: every rank computes all of it).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .distributed import broadcast_from_main, current_ranks, gather_in_order, gather_objects, shard
from .features import FIDFeatures, build_feature_model
from .gpu_decode import gpu_decode_available
from .images import list_image_files
from .loader import default_num_workers
from .pipeline import extract_features, to_model_input
from .statistics import calculate_frechet_distance, feature_statistics, load_statistics

Source = str | os.PathLike | list | torch.Tensor

# Unreadable files named in one warning, at most.
_NAMED_FAILURES = 50


def is_statistics_file(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz")


def _feature_model(model, weights, dims, device, precision, backend) -> FIDFeatures:
    if isinstance(model, FIDFeatures):
        if model.dims != dims:
            raise ValueError(f"the feature model gives dims={model.dims}, but dims={dims} was asked for")
        return model
    return build_feature_model(weights, model=model, dims=dims, device=device, precision=precision,
                               backend=backend)


def _warn_unreadable(failures: list[tuple[str, str]]) -> None:
    if not failures:
        return
    named = "; ".join(f"{path} ({reason})" for path, reason in failures[:_NAMED_FAILURES])
    more = f"; and {len(failures) - _NAMED_FAILURES} more" if len(failures) > _NAMED_FAILURES else ""
    warnings.warn(f"skipped {len(failures)} unreadable image file(s): {named}{more}", stacklevel=3)


def _features_of_tensor(images: torch.Tensor, model: FIDFeatures, batch_size: int) -> np.ndarray:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images as [N, 3, H, W], got shape {tuple(images.shape)}")
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size].to(model.device)
            chunk = to_model_input(chunk) if chunk.dtype == torch.uint8 else chunk
            out.append(model(chunk).cpu())
    return torch.cat(out).double().numpy()


def _files_of(source) -> tuple[list[Path], str]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("the list of image files is empty")
        return [Path(f) for f in source], f"{len(source)} files"
    return list_image_files(source), str(source)


def compute_features(
    source: Source,
    weights: str | os.PathLike | None = None,
    *,
    model=None,
    dims: int = 2048,
    batch_size: int = 50,
    device=None,
    num_workers: int | None = None,
    precision: str = "fp32",
    backend: str = "auto",
    gpu_decode: bool = False,
    progress: bool | None = None,
) -> np.ndarray:
    """FID features, [N, dims] float64 (as pytorch-fid's `get_activations` returns them).

    Args:
        source: a folder of images (nested folders too), a list of image files, or a tensor of
            images [N, 3, H, W] (uint8, or float in [0, 1]).
        weights: pytorch-fid's checkpoint file; default pytorch-fid's own download where present.
        model: instead of weights, a network (ours or pytorch-fid's InceptionV3) or a feature
            model from `build_feature_model` (then dims, device, precision, backend are its own).
        batch_size, num_workers: images per network call; CPU processes decoding files
            (default: all the CPUs, less one).
        precision: "fp32" (pytorch-fid's results), "fp16" or "bf16" (faster, opt-in).
        backend: "auto", "torch", "triton", "cuda" (fused) or "eager" (plain PyTorch).
        gpu_decode: decode JPEG files with nvJPEG on the GPU (pixels differ slightly from PIL's).
        progress: show a progress bar (default: on long runs).

    Files that cannot be read are skipped with a warning that names them. Rows follow the file
    order (a folder's files sorted as pytorch-fid sorts them, a list as given), less the skipped
    files.
    """
    rows = _feature_rows(source, weights, model=model, dims=dims, batch_size=batch_size, device=device,
                         num_workers=num_workers, precision=precision, backend=backend,
                         gpu_decode=gpu_decode, progress=progress)
    return rows if isinstance(rows, np.ndarray) else rows.cpu().double().numpy()


def _feature_rows(source, weights=None, *, model=None, dims: int = 2048, batch_size: int = 50,
                  device=None, num_workers: int | None = None, precision: str = "fp32",
                  backend: str = "auto", gpu_decode: bool = False,
                  progress: bool | None = None) -> np.ndarray | torch.Tensor:
    """compute_features' rows where they were made: on the network's device for files (the
    statistics reduce them there), as float64 numpy for a tensor of images."""
    feature_model = _feature_model(model, weights, dims, device, precision, backend)
    if isinstance(source, torch.Tensor):
        return _features_of_tensor(source, feature_model, batch_size)
    files, what = _files_of(source)
    device = feature_model.device
    if gpu_decode:
        ok, reason = gpu_decode_available(device)
        if not ok:
            raise ValueError(f"gpu_decode: {reason}")
    ranks = current_ranks()
    if num_workers is None:
        num_workers = default_num_workers(ranks.local_world_size)
    mine = shard(len(files), ranks)
    extracted = extract_features(
        [files[i] for i in mine], feature_model, device, batch_size, num_workers, gpu_decode,
        progress if ranks.is_main else False, description=f"features of {what}",
    )
    features = extracted.features
    if features.numel() == 0:
        features = torch.empty(0, feature_model.dims, device=device)
    global_positions = torch.tensor(mine, dtype=torch.int64)[extracted.positions]
    features, _ = gather_in_order(features, global_positions, ranks)
    failures = [(str(files[mine[i]]), reason) for i, reason in extracted.failures]
    failures = sorted(f for rank_failures in gather_objects(failures, ranks) for f in rank_failures)
    if ranks.is_main:
        _warn_unreadable(failures)
    if features.shape[0] == 0:
        raise ValueError(f"none of the {len(files)} image files of {what} could be read")
    return features


def compute_statistics(
    source: Source, weights: str | os.PathLike | None = None, **options
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a folder, list or tensor of images, in float64 as pytorch-fid computes
    them; or those saved in a pytorch-fid `.npz` statistics file. Options: `compute_features`'s."""
    if is_statistics_file(source):
        if not Path(source).is_file():
            raise FileNotFoundError(f"statistics file not found: {source}")
        return load_statistics(source)
    return feature_statistics(_feature_rows(source, weights, **options))


def main_rank_statistics(source: Source, **options) -> tuple[np.ndarray, np.ndarray] | None:
    """compute_statistics on the main rank; the other ranks only help extract the features."""
    if is_statistics_file(source) or current_ranks().is_main:
        return compute_statistics(source, **options)
    _feature_rows(source, **options)  # gathered on every rank; only the main rank reduces them
    return None


def compute_fid(
    path_a: Source,
    path_b: Source,
    weights: str | os.PathLike | None = None,
    *,
    fid_method: str = "eigh",
    dims: int = 2048,
    device=None,
    precision: str = "fp32",
    backend: str = "auto",
    model=None,
    timings: dict | None = None,
    **options,
) -> float:
    """The FID of two folders of images (or `.npz` statistics files, lists, tensors).

    fid_method: "eigh" (the default: Tr(sqrtm(sigma1 sigma2)) from symmetric eigendecompositions,
    equal to pytorch-fid's value to 1e-12 on full-rank covariances and about 10 s faster at dims
    2048 on a 16-core machine) or "sqrtm" (pytorch-fid's algorithm step for step). Other
    options: `compute_features`'s. The network is built once, and only when a source needs it.
    `timings`, a dict, receives the seconds of each step (model, statistics of each side,
    distance).
    """
    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now

    for source in (path_a, path_b):
        if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
            raise FileNotFoundError(f"Invalid path: {source}")
    if model is None and not (is_statistics_file(path_a) and is_statistics_file(path_b)):
        model = build_feature_model(weights, dims=dims, device=device, precision=precision, backend=backend)
        weights = None
    lap("model_s")
    common = dict(weights=weights, model=model, dims=dims, device=device, precision=precision,
                  backend=backend, **options)
    stats_a = main_rank_statistics(path_a, **common)
    lap("statistics_a_s")
    stats_b = main_rank_statistics(path_b, **common)
    lap("statistics_b_s")
    ranks = current_ranks()
    value = None
    if ranks.is_main:
        if stats_a[0].shape != stats_b[0].shape:
            raise ValueError(f"the two sides have features of different sizes ({stats_a[0].shape[0]} and "
                             f"{stats_b[0].shape[0]}): an .npz made with another --dims?")
        model_device = getattr(model, "device", None)  # a feature model's; a bare network has none
        on_gpu = model_device is not None and torch.device(model_device).type == "cuda"
        value = calculate_frechet_distance(*stats_a, *stats_b, method=fid_method,
                                           device=model_device if on_gpu else None)
    value = float(broadcast_from_main(value, ranks))
    lap("distance_s")
    return value
