"""Fused Inception-v4 inference: the parallel branch convolutions and the concat of each block
run as one kernel launch per dependency stage (Triton or a CUDA extension)."""

from .modules import (
    FusedBlock,
    FusedConvBnRelu,
    FusedHead,
    FusedInceptionA,
    FusedInceptionB,
    FusedInceptionC,
    FusedInceptionV4,
    FusedMixed3a,
    FusedMixed4a,
    FusedMixed5a,
    FusedReductionA,
    FusedReductionB,
    fuse_block,
)
from .optimize import optimize
from .reference import DEFAULT_CFG, InceptionV4, inception_v4

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CFG",
    "FusedBlock",
    "FusedConvBnRelu",
    "FusedHead",
    "FusedInceptionA",
    "FusedInceptionB",
    "FusedInceptionC",
    "FusedInceptionV4",
    "FusedMixed3a",
    "FusedMixed4a",
    "FusedMixed5a",
    "FusedReductionA",
    "FusedReductionB",
    "InceptionV4",
    "fuse_block",
    "inception_v4",
    "optimize",
]
