"""FID with pytorch-fid's Inception features, fused: `inception-fast fid PATH_A PATH_B --weights FILE`.

dims.py        pytorch-fid's feature sizes
network.py     FIDInceptionV3: pytorch-fid's InceptionV3 (module tree, keys, forward)
checkpoint.py  pytorch-fid's checkpoint file -> the network
features.py    the feature model: images in [0, 1] -> [N, dims], eager or fused, fp32/fp16/bf16
images.py      finding image files, PIL decoding as pytorch-fid does
loader.py      DataLoader workers: uint8 batches grouped by image size
gpu_decode.py  nvJPEG decoding of JPEG batches (opt-in)
pipeline.py    decode, transfer and network overlapped on one device
progress.py    the progress bar of long runs
distributed.py the files split across torchrun ranks, features gathered in file order
statistics.py  mu, sigma, the Fréchet distance, .npz files
api.py         compute_features, compute_statistics, compute_fid
cli.py         the `fid` sub-command
testing.py     random-weight checkpoints in pytorch-fid's format, generated images (tests, benchmarks)
"""

from importlib import import_module

# Where each public name lives; imported on first use, so that building the command line
# parser (which imports .cli) does not load torchvision and scipy.
_EXPORTS = {
    "compute_features": "api", "compute_fid": "api", "compute_statistics": "api",
    "CHECKPOINT_FILENAME": "checkpoint", "from_pytorch_fid": "checkpoint", "load_fid_inception": "checkpoint",
    "BACKENDS": "features", "PRECISIONS": "features", "FIDFeatures": "features",
    "build_feature_model": "features",
    "IMAGE_EXTENSIONS": "images", "list_image_files": "images",
    "BLOCK_INDEX_BY_DIM": "dims", "FIDInceptionV3": "network",
    "calculate_frechet_distance": "statistics", "feature_statistics": "statistics",
    "load_statistics": "statistics", "save_statistics": "statistics",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKENDS",
    "BLOCK_INDEX_BY_DIM",
    "CHECKPOINT_FILENAME",
    "IMAGE_EXTENSIONS",
    "PRECISIONS",
    "FIDFeatures",
    "FIDInceptionV3",
    "build_feature_model",
    "calculate_frechet_distance",
    "compute_features",
    "compute_fid",
    "compute_statistics",
    "feature_statistics",
    "from_pytorch_fid",
    "list_image_files",
    "load_fid_inception",
    "load_statistics",
    "save_statistics",
]
