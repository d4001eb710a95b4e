"""What the Triton backends keep beside a packed table between calls.

`packing.PackedStage` is the format that the triton, triton-block and cuda backends all read;
the state below is the Triton launches' alone, so it lives here, held next to each table by the
backend that launches it (in `block.backend_cache`, with the table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ... import packing as pk
from ...graphs import capturing


@dataclass(eq=False)
class StageLaunchState:
    """The Triton launches' state for one packed table: filled on first use, kept after."""

    configs: dict = field(default_factory=dict)  # launch config chosen per input shape
    scratch: dict = field(default_factory=dict)  # split-K buffers per shape, config and stream
    tiles: dict = field(default_factory=dict)  # programs of a launch per shape and config
    tf32_weights: torch.Tensor | None = None  # the table's fp32 weights rounded to TF32

    def weights_for(self, table: pk.PackedStage, tf32: bool) -> torch.Tensor:
        """`table`'s weights as a kernel with TF32 dots (True) or exact dots reads them. The
        rounded copy is made once: `table` is the table this state belongs to, or one that
        shares its weights (the rest of a TMA stage)."""
        if not tf32:
            return table.weights
        if self.tf32_weights is None:
            rounded = round_to_tf32(table.weights)
            if capturing():
                return rounded  # made in a capture: valid only once that graph replays, so its own
            self.tf32_weights = rounded
        return self.tf32_weights


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32 (10 mantissa bits), to nearest with ties away from zero:
    adding half an ulp to the magnitude bits, then clearing the 13 dropped bits. The kernels'
    twin is `tf32.round_to_tf32`."""
    bits = t.view(torch.int32)  # same element size: keeps any layout
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
