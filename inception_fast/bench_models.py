"""The networks the benchmarks know: one table, read by `inception-fast bench --model NAME` and
by `pytest benchmarks/`.

Each entry says how the source model is built (the library call a user makes, random weights),
its input size, the dtype it is timed in by default and which anchors apply. The work per image
is not written here: `gflops_per_image` counts it from the network itself (layer_census). The
fused model is always `inception_fast.optimize(source_model, ...)`; whether this version of
optimize() accepts a network is found by calling it, not listed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

from torch import nn

from . import layer_census
from .testing import calibrated_model

# Anchor names (their builders are in inception_fast.bench). Every model gets these; `extra`
# anchors apply only where the table says so.
ANCHORS = (
    "eager", "eager-graph", "compile", "compile-freezing", "compile-ro-freezing",
    "compile-max-autotune", "compile-max-autotune-freezing",
)


def _architecture(name: str) -> Callable[[], nn.Module]:
    """The source model as `inception_fast.architectures` builds it (random weights)."""

    def build() -> nn.Module:
        from . import architectures

        return architectures.create(name)

    return build


def _fid_inception_v3() -> nn.Module:
    """pytorch-fid's InceptionV3 (the FID network: FIDInceptionA/C/E blocks, 1008 classes, the
    2048-d pool3 features, bilinear resize to 299 and [0, 1] -> [-1, 1] inside), random weights:
    its constructor always downloads the TF-ported weights, so the download is stubbed out."""
    import pytorch_fid.inception as fid

    build_torchvision = fid._inception_v3

    def without_weights(*args, **kwargs):
        model = build_torchvision(*args, **kwargs)
        model.load_state_dict = lambda *a, **k: None  # the weights that were not downloaded
        return model

    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fid, "_inception_v3", without_weights):
        return fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])


@dataclass(frozen=True)
class BenchModel:
    name: str
    source: str  # the call a user makes, for people
    library: str  # names the eager anchor: "timm eager fp16 channels_last"
    build: Callable[[], nn.Module]  # random weights, any mode
    image_size: int
    dtype: str = "fp16"  # default dtype of `inception-fast bench --model NAME`
    extra_anchors: tuple[str, ...] = ()
    note: str = ""

    @property
    def anchors(self) -> tuple[str, ...]:
        return ANCHORS + self.extra_anchors

    def calibrated(self, seed: int = 0, image_size: int | None = None) -> nn.Module:
        """The source model with random weights and BatchNorm calibrated on random images at
        `image_size` (default: the model's), fp32 on the CPU, eval mode."""
        return calibrated_model(self.build, seed, image_size or self.image_size)


MODELS = {m.name: m for m in (
    BenchModel("inception_v4", "timm.create_model('inception_v4')", "timm", _architecture("inception_v4"),
               299),
    BenchModel("googlenet", "torchvision.models.googlenet(aux_logits=False)", "torchvision",
               _architecture("googlenet"), 224),
    BenchModel("inception_v3", "torchvision.models.inception_v3(aux_logits=False)", "torchvision",
               _architecture("inception_v3"), 299),
    BenchModel("timm_inception_v3", "timm.create_model('inception_v3')", "timm",
               _architecture("timm_inception_v3"), 299),
    BenchModel("inception_resnet_v2", "timm.create_model('inception_resnet_v2')", "timm",
               _architecture("inception_resnet_v2"), 299),
    BenchModel("fid_inception_v3", "pytorch_fid.inception.InceptionV3([3]) (pool3 features)", "pytorch-fid",
               _fid_inception_v3, 299, dtype="fp32-tf32", extra_anchors=("eager-nchw",),
               note="fp32 as pytorch-fid runs it (PyTorch's default TF32 convolutions); "
                    "eager-nchw is its own layout"),
)}


def get(name: str) -> BenchModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def gflops_per_image(model: nn.Module, image_size: int) -> float:
    """2 x the multiply-accumulates of every Conv2d and Linear of one image, in GFLOP."""
    return 2 * layer_census.macs_per_image(layer_census.census(model, image_size)) / 1e9


def describe(name: str, model: nn.Module | None = None) -> dict:
    """One row of the table, the work counted from the network (`model`, or one built now) at
    its input size."""
    spec = get(name)
    row = {"model": spec.name, "source": spec.source, "image_size": spec.image_size, "dtype": spec.dtype,
           "anchors": list(spec.anchors), "note": spec.note}
    try:
        model = model if model is not None else spec.build()
    except ImportError as err:
        return {**row, "gflops_per_image": None, "error": f"cannot build: {err}"}
    row["gflops_per_image"] = round(gflops_per_image(model, spec.image_size), 3)
    return row
