"""Feature extraction split across processes (`torchrun --nproc-per-node N`).

Each rank takes every N-th file of the sorted list, and the features come back to every rank
in the global file order, so the statistics, and the FID, are those of one process: the same
sums in the same order, whatever N is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_ranks() -> Ranks:
    """The process group's ranks where one is initialised, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(
        dist.get_rank(), dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def local_device(requested: str | None) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for "cuda" (or by default where CUDA is
    available), the CPU for "cpu"."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_from_environment(device: torch.device) -> bool:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on the CPU). Returns True
    when this call created it (and so should destroy it)."""
    if not launched_distributed() or (dist.is_available() and dist.is_initialized()):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def shard(count: int, ranks: Ranks) -> list[int]:
    """This rank's positions in a list of `count` files: every world_size-th, from rank."""
    return list(range(ranks.rank, count, ranks.world_size))


def _all_gather_rows(rows: torch.Tensor, ranks: Ranks) -> list[torch.Tensor]:
    """Every rank's `rows` ([n_r, ...], n_r may differ), on every rank."""
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(ranks.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(gathered, padded)
    return [g[:c] for g, c in zip(gathered, counts)]


def gather_in_order(
    features: torch.Tensor, positions: torch.Tensor, ranks: Ranks
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (features [n_r, dims], global positions [n_r]) merged and sorted by position."""
    if ranks.world_size == 1:
        order = torch.argsort(positions.cpu())
        return features[order.to(features.device)], positions.cpu()[order]
    positions = positions.to(features.device)
    all_features = torch.cat(_all_gather_rows(features, ranks))
    all_positions = torch.cat(_all_gather_rows(positions, ranks)).cpu()
    order = torch.argsort(all_positions)
    return all_features[order.to(all_features.device)], all_positions[order]


def gather_objects(value, ranks: Ranks) -> list:
    """Every rank's `value` (picklable), on every rank."""
    if ranks.world_size == 1:
        return [value]
    values = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_from_main(value, ranks: Ranks):
    if ranks.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
