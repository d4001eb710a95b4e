"""pytorch-fid's feature sizes and the network blocks they come from (light: no torchvision)."""

from __future__ import annotations

# Feature dimensionality -> the block whose output it is, as pytorch-fid numbers them.
BLOCK_INDEX_BY_DIM = {
    64: 0,    # after the first max-pool
    192: 1,   # after the second max-pool
    768: 2,   # Mixed_6e, the input of the auxiliary classifier
    2048: 3,  # the final average pool
}
DEFAULT_DIMS = 2048


def block_index(dims: int) -> int:
    if dims not in BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims must be one of {sorted(BLOCK_INDEX_BY_DIM)} (pytorch-fid's choices), "
                         f"got {dims}")
    return BLOCK_INDEX_BY_DIM[dims]
