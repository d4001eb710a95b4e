"""Fused inference for the Inception family: each block's parallel branch convolutions and
their concatenation run as one kernel launch per dependency stage (Triton or a CUDA
extension), from plans derived from the model itself."""

from .architectures.inception_v4 import DEFAULT_CFG, InceptionV4, inception_v4
from .compiler import UnsupportedModel
from .modules import FusedBlock, FusedNetwork, fuse_block
from .optimize import optimize

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_CFG",
    "FusedBlock",
    "FusedNetwork",
    "InceptionV4",
    "UnsupportedModel",
    "fuse_block",
    "inception_v4",
    "optimize",
]
