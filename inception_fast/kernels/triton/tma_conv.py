"""The host side of the TMA conv kernel (`tma_conv_kernel`, whose docstring tells how it maps
stride-1 convs onto tensor-descriptor boxes): the switch that turns it on, which rows of a
packed stage it takes and the split of a stage around them, its tile configs and tile counts,
its persistent grid and descriptor scratch, and its launch on torch tensors. Apart from the
kernel, which compile workers import without torch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import torch
import triton

from ... import packing as pk
from ...graphs import outside_capture
from .launch_state import StageLaunchState, round_to_tf32


class TmaConfig(NamedTuple):
    """A launch of the TMA kernel. box_w: 0 for FLAT tiles of windows wider than 1x1, else BOX
    tiles of (block_m // box_w) x box_w pixels. per_sm: persistent programs per SM. flatten:
    1 fuses the tile and K loops (the kernel's FLATTEN). rows: 1 gives windows that keep the
    size ROWS tiles across images (with box_w 0)."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 4
    box_w: int = 0
    per_sm: int = 1
    flatten: int = 1
    rows: int = 0

    def label(self) -> str:
        tiles = "rows" if self.rows else "flat"
        if self.box_w:
            tiles = f"box{self.block_m // self.box_w}x{self.box_w}"
        return (f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages} "
                f"{tiles} {self.per_sm}/SM{' fused-loops' if self.flatten else ''}")


ENV_MODE = "INCEPTION_FAST_TMA"  # 1: stages of TMA-expressible convs only; split: also mixed stages
ENV_CONFIG = "INCEPTION_FAST_TMA_CONFIG"  # block_m,block_n,block_k,warps,stages[,box_w,per_sm,flatten,rows]
MODES = ("1", "split")


def mode() -> str | None:
    """The TMA switch: None (off, the default), "1" or "split" (module docstring of the
    backend: where each applies)."""
    value = os.environ.get(ENV_MODE, "")
    if value in ("", "0"):
        return None
    if value not in MODES:
        raise ValueError(f"{ENV_MODE}={value!r}: use 1 (TMA for stages whose every problem is a "
                         "stride-1 conv), split (also the stride-1 convs of mixed stages) or 0 (off)")
    return value


def row_reason(row) -> str | None:
    """Why one packed problem cannot run on the TMA kernel (None if it can)."""
    if row[pk.KIND] != pk.CONV:
        return "a pool (the stage kernel's gather path runs pools)"
    if row[pk.STRIDE] != 1:
        return f"a stride-{row[pk.STRIDE]} conv (its taps are strided, not boxes)"
    if 2 * row[pk.PAD_H] >= row[pk.KH] or 2 * row[pk.PAD_W] >= row[pk.KW]:
        if row[pk.PAD_H] or row[pk.PAD_W]:
            return "padding of half the window or more (the output is larger than the input)"
    if row[pk.SRC_C0] % 8 or row[pk.CIN] % 8 or row[pk.COLS] % 8:
        return "channels not in multiples of 8 (descriptors need 16-byte aligned rows)"
    return None


def dtype_reason(dtype: torch.dtype, tf32: bool) -> str | None:
    if dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32):
        return None
    return f"{dtype} {'with TF32' if tf32 else 'with exact dots'} (the TMA kernel runs fp16, bf16 and TF32)"


def buffers_reason(*tensors: torch.Tensor) -> str | None:
    """Descriptors need 16-byte aligned bases and pixel strides."""
    for t in tensors:
        if t.data_ptr() % 16 or (t.shape[1] * t.element_size()) % 16:
            return "a buffer whose base or pixel stride is not a multiple of 16 bytes"
    return None


@dataclasses.dataclass
class TmaStage:
    """One stage as the TMA path runs it: `problems` (rows `rows`) on the TMA kernel, `rest` (a
    stage of the other rows, or None) on the stage kernel. Both read the whole stage's weights
    and column tables, so the rows keep their offsets."""

    stage: pk.PackedStage
    problems: torch.Tensor
    rows: list
    rest: pk.PackedStage | None
    has_gemm: bool
    has_taps: bool
    tap_mask: bool  # some wider window has PAD_W > 0 (FLAT tiles mask its wrapped rows)
    has_residual: bool
    rest_signature: str = ""  # `packing.stage_signature(rest)`: its tuning key
    rest_state: StageLaunchState | None = None  # the stage kernel's launch state for `rest`
    configs: dict = dataclasses.field(default_factory=dict)  # TmaConfig per input shape

    def kernel_flags(self, config: TmaConfig) -> tuple[bool, bool, bool, bool]:
        """(HAS_GEMM, HAS_TAPS, TAP_MASK, HAS_RESIDUAL) of the kernel for `config`: BOX tiles
        need no masked FLAT loop, and ROWS tiles leave it only the windows that shrink."""
        tap_mask = self.tap_mask and not config.box_w
        if config.rows:
            tap_mask = any(not _is_gemm(r) and r[pk.PAD_W] > 0 and not _keeps_size(r) for r in self.rows)
        return self.has_gemm, self.has_taps, tap_mask, self.has_residual


def _is_gemm(row) -> bool:
    return row[pk.KH] == row[pk.KW] == 1 and row[pk.PAD_H] == row[pk.PAD_W] == 0


def _keeps_size(row) -> bool:
    return row[pk.KH] == 2 * row[pk.PAD_H] + 1 and row[pk.KW] == 2 * row[pk.PAD_W] + 1


def plan_stage(stage: pk.PackedStage, allow_split: bool = False) -> TmaStage | None:
    """The TMA split of a stage: None when no problem can run on the TMA kernel, or when some
    cannot and `allow_split` is off (the stage stays one launch of the stage kernel)."""
    take = [p for p, row in enumerate(stage.rows) if row_reason(row) is None]
    if not take or (len(take) < len(stage.rows) and not allow_split):
        return None
    rows = [stage.rows[p] for p in take]
    device = stage.problems.device
    outside_capture(device, "planning a TMA stage")
    index = torch.tensor(take, dtype=torch.long, device=device)
    rest = None
    if len(take) < len(stage.rows):
        others = [p for p in range(len(stage.rows)) if p not in take]
        rest_rows = [stage.rows[p] for p in others]
        rest = dataclasses.replace(
            stage, problems=stage.problems[torch.tensor(others, dtype=torch.long, device=device)],
            rows=rest_rows, residual=_any_residual(stage, rest_rows),
        )
    return TmaStage(
        stage=stage,
        problems=stage.problems[index] if rest is not None else stage.problems,
        rows=rows,
        rest=rest,
        has_gemm=any(_is_gemm(r) for r in rows),
        has_taps=any(not _is_gemm(r) for r in rows),
        tap_mask=any(not _is_gemm(r) and r[pk.PAD_W] > 0 for r in rows),
        has_residual=_any_residual(stage, rows),
        rest_signature=pk.stage_signature(rest) if rest is not None else "",
        rest_state=StageLaunchState() if rest is not None else None,
    )


def _any_residual(stage: pk.PackedStage, rows) -> bool:
    if not stage.residual:
        return False
    flags = stage.col_flags.cpu()
    return any(
        bool((flags[r[pk.COL_OFF] : r[pk.COL_OFF] + r[pk.COLS]] & pk.FLAG_RESIDUAL).any()) for r in rows
    )


def tma_tiles(rows, n: int, h: int, w: int, config: TmaConfig) -> int:
    """Output tiles of the TMA rows (`tma_conv_kernel._problem_tiles`, host side)."""
    total = 0
    for row in rows:
        oh = h + 2 * row[pk.PAD_H] - row[pk.KH] + 1
        ow = w + 2 * row[pk.PAD_W] - row[pk.KW] + 1
        if _is_gemm(row) or (config.rows and not config.box_w and _keeps_size(row)):
            m_tiles = triton.cdiv(n * h * w, config.block_m)
        elif config.box_w:
            box_h = config.block_m // config.box_w
            m_tiles = n * triton.cdiv(oh, box_h) * triton.cdiv(ow, config.box_w)
        else:
            m_tiles = n * triton.cdiv(oh * w, config.block_m)
        total += m_tiles * triton.cdiv(row[pk.COLS], config.block_n)
    return total


def computed_fraction(rows, n: int, h: int, w: int, config: TmaConfig) -> float:
    """Useful output pixels over the pixels the tiles compute (columns aside): how much of the
    MMA work a tile shape wastes on a map size."""
    useful = computed = 0
    for row in rows:
        oh = h + 2 * row[pk.PAD_H] - row[pk.KH] + 1
        ow = w + 2 * row[pk.PAD_W] - row[pk.KW] + 1
        single = TmaConfig(**{**config._asdict(), "block_n": 1 << 30})
        useful += n * oh * ow
        computed += tma_tiles([row], n, h, w, single) * config.block_m
    return useful / max(computed, 1)


_SM_COUNT: dict = {}


def _programs(device: torch.device, tiles: int, per_sm: int) -> int:
    """The persistent grid: every SM busy, never more programs than tiles. On the CPU (the
    interpreter) a few programs, so that each takes several tiles."""
    if device.type != "cuda":
        return max(1, min(tiles, 3))
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return max(1, min(tiles, _SM_COUNT[index] * per_sm))


def _allocate_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for device-side descriptors (128 bytes each per program). From PyTorch's
    caching allocator: cheap per launch, and captured CUDA graphs keep it in their pool."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator() -> None:
    """Set our scratch allocator unless one is set in this context already (the allocator is
    a context variable: each thread starts without one)."""
    try:
        from triton.runtime import _allocation

        current = _allocation._allocator.get()
        if not isinstance(current, _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another Triton layout: set ours each time
        pass
    triton.set_allocator(_allocate_scratch)


def default_config(tma: TmaStage, element_size: int) -> TmaConfig:
    """Without timing: 128x128 tiles, K steps of 64 (32 where a step would be mostly zeros or
    the elements are 4 bytes), 4 stages; INCEPTION_FAST_TMA_CONFIG overrides it."""
    override = os.environ.get(ENV_CONFIG)
    if override:
        try:
            return TmaConfig(*(int(v) for v in override.split(",")))
        except (TypeError, ValueError):
            raise ValueError(
                f"{ENV_CONFIG}={override!r}: give block_m,block_n,block_k,num_warps,num_stages"
                "[,box_w[,per_sm[,flatten[,rows]]]] as integers, e.g. 128,128,64,8,4"
            ) from None
    min_cin = min(row[pk.CIN] for row in tma.rows)
    block_k = 32 if element_size >= 4 or min_cin <= 32 else 64
    return TmaConfig(block_k=block_k)


def check_config(config: TmaConfig) -> None:
    """Shapes the kernel can take (ValueError naming the field). A box row of block_k >= 16
    elements is at least the 16 bytes a descriptor needs."""
    for name in ("block_m", "block_n", "block_k"):
        value = getattr(config, name)
        if value < 16 or value & (value - 1) or value > 256:
            raise ValueError(f"{name} must be a power of two in [16, 256], got {value}")
    if config.box_w and (config.box_w & (config.box_w - 1) or config.block_m % config.box_w):
        raise ValueError(f"box_w={config.box_w} must be a power of two that divides block_m={config.block_m}")
    if config.per_sm < 1:
        raise ValueError(f"per_sm must be at least 1, got {config.per_sm}")
    if config.rows and config.box_w:
        raise ValueError("rows=1 (ROWS tiles) and box_w > 0 (BOX tiles) exclude each other")


def launch_tma_tensors(
    kernel, num_programs, x, work, out, problems, weights, bias, col_dst, col_flags, config, precision,
    has_gemm, has_taps, tap_mask, has_residual,
):
    """Launch `kernel` (the raw kernel, or wrap_triton(kernel) inside a triton_op) on
    `num_programs` persistent programs. x, work, out: NCHW shapes stored channels_last; config:
    a TmaConfig (or its tuple); the flags from `TmaStage.kernel_flags`."""
    config = TmaConfig(*config)
    n, _, h, w = x.shape
    if x.is_cuda:
        ensure_allocator()
    kernel[(num_programs,)](
        x, work, out, weights, bias, col_dst, col_flags, problems,
        n, h, w, x.shape[1], work.shape[1], out.shape[1], problems.shape[0],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, BOX_W=config.box_w,
        INPUT_PRECISION=precision, HAS_GEMM=has_gemm, HAS_TAPS=has_taps, TAP_MASK=tap_mask,
        HAS_RESIDUAL=has_residual, WIDE_INDEX=max(x.numel(), work.numel(), out.numel()) >= 2**31,
        FLATTEN=bool(config.flatten), ROWS=bool(config.rows),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def num_programs(tma: TmaStage, x: torch.Tensor, config: TmaConfig) -> int:
    """The persistent grid of one launch of `tma`'s rows on input `x`."""
    n, _, h, w = x.shape
    return _programs(x.device, tma_tiles(tma.rows, n, h, w, config), config.per_sm)


def launch_tma_stage(kernel, tma: TmaStage, x, work, out, config: TmaConfig, precision: str = "tf32"):
    """The TMA rows of one stage, launched directly (tests, the interpreter, benchmarks); the
    `rest` rows are the caller's. precision: "tf32" or "ieee" (fp32 only; fp16/bf16 ignore it).
    With TF32 the weights are rounded for this launch (the backend keeps its rounded copy)."""
    config = TmaConfig(*config)
    check_config(config)
    tf32 = precision == "tf32" and x.dtype == torch.float32
    weights = round_to_tf32(tma.stage.weights) if tf32 else tma.stage.weights
    launch_tma_tensors(
        kernel, num_programs(tma, x, config), x, work, out, tma.problems, weights,
        tma.stage.bias, tma.stage.col_dst, tma.stage.col_flags, config, precision,
        *tma.kernel_flags(config),
    )
