"""Tile configurations for the stage kernel: timed once per problem, cached on disk.

The key is the stage's shape (`packing.stage_signature`), the input size, a batch *bucket*
(powers of 4), the dtype and the card, so nearby batch sizes share one tuning run, a stage of
the same shape in another network shares it too, and a second process reads the choice from
the cache instead of timing again.

A first call never waits for tuning: it takes the choice cached for the key, else the one
shipped in `tuned_configs.json` (measured on 132-SM Hopper cards), else the choice cached or
shipped for the same stage at the nearest batch bucket, else a heuristic. Tuning runs ahead
of time (`inception-fast tune`, which fills the cache) or, with INCEPTION_FAST_AUTOTUNE=1, on
the first call of each new key (a progress line says so). INCEPTION_FAST_AUTOTUNE=force also
ignores the shipped table and times every new key; =0 never times.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from ... import cache, timing
from ...graphs import capturing
from . import compile_only

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_K and the split-K parts are added below.
_TILES = (
    (128, 128, 8, 3),
    (128, 64, 4, 4),
    (64, 128, 4, 4),
    (64, 64, 4, 4),
    (128, 256, 8, 3),
)
_SMALL_TILES = ((64, 64, 4, 4), (64, 128, 4, 4))
_SPLITS = (2, 4, 8)
SMALL_BATCH = 16  # at or below this batch, convs may split K: their tiles alone leave SMs idle


def candidates(min_cin: int, batch: int, has_conv: bool = True, element_size: int = 2) -> list[tuple]:
    """Configs (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, k_parts) worth timing for a
    stage whose narrowest conv reads `min_cin` channels: BLOCK_K never much wider than the
    channels a tap has (the stem's 8 or 32 channels would leave most of a 64-wide K step
    empty); split-K variants for small batches. fp32 (`element_size` 4) doubles the shared
    memory a tile needs: K steps of at most 32 and no 128x256 tile, which also keeps its
    tuning short."""
    if min_cin >= 64 and element_size <= 2:
        widths = (64, 32)
    elif min_cin >= 32:
        widths = (32,)
    else:
        widths = (16,)
    tiles = _TILES if element_size <= 2 else _TILES[:4]
    configs = [(bm, bn, bk, warps, stages, 1) for bk in widths for bm, bn, warps, stages in tiles]
    if has_conv and batch <= SMALL_BATCH:
        configs += [
            (bm, bn, widths[0], warps, stages, parts)
            for bm, bn, warps, stages in _SMALL_TILES
            for parts in _SPLITS
        ]
    return configs


# Pool-only stages do no dot: their work is loads. Their tiles are as wide as the channels allow
# up to 64 (every lane works: the conv tiles' 128 x 256 masked off 62% of the lanes of a
# 96-channel pool) and hold POOL_TILE_ELEMENTS elements with 4 warps, fewer rows while the stage
# has fewer tiles than SMs. On an H100 (Inception-v4's pool-only stages under triton-gemm, fp16,
# benchmarks/device/pool_configs.py) this took 1.04x the best tile of each stage summed over the
# network at batch 256, 1.11x at 32, 1.06x / 1.10x at 8 / 1; the conv tiles' rule 2.2x / 2.1x /
# 1.5x / 1.3x.
POOL_TILE_ELEMENTS = 2048
_POOL_TUNING_ELEMENTS = 8192  # the most a timed candidate holds (stage_kernel._pool_tile unrolls up to it)
_POOL_WIDTHS = (64, 32, 16, 8)
_POOL_MIN_ROWS = 16


def pool_width(channels: int) -> int:
    """The widest of 64, 32, 16 and 8 channels that divides `channels` (every lane works;
    channel counts are multiples of 8)."""
    return next(width for width in _POOL_WIDTHS if channels % width == 0)


def _pool_tile_config(block_m: int, block_n: int) -> tuple:
    warps = 8 if block_m * block_n > POOL_TILE_ELEMENTS * 2 else 4
    return (block_m, block_n, 16, warps, 1, 1)  # BLOCK_K: unused without a conv


def pool_candidates(channels: int, batch: int, element_size: int = 2) -> list[tuple]:
    """Configs worth timing for a pool-only stage whose pools have `channels` in common (their
    gcd): at the widest width that divides them, every row count from 16 up to 8192 elements,
    then the conv tiles (a shipped or cached choice may be one of those)."""
    width = pool_width(channels)
    rows = [_POOL_TUNING_ELEMENTS // width]
    while rows[-1] > _POOL_MIN_ROWS:
        rows.append(rows[-1] // 2)
    pool_tiles = [_pool_tile_config(block_m, width) for block_m in rows]
    return pool_tiles + candidates(64, batch, False, element_size)


def pool_config(channels: int, tiles, sms: int = 132) -> tuple:
    """Without timing: the widest tile up to 64 channels that divides the channels, with
    POOL_TILE_ELEMENTS elements, fewer rows (16 at least) while the stage has fewer tiles than
    SMs. `tiles(block_m, block_n)`: the stage's tile count."""
    width = pool_width(channels)
    block_m = POOL_TILE_ELEMENTS // width
    while block_m > _POOL_MIN_ROWS and tiles(block_m, width) < sms:
        block_m //= 2
    return _pool_tile_config(block_m, width)


_shipped_table: dict | None = None
SHIPPED_FOR = (9, 0, 132)  # compute capability and SM count of the cards tuned_configs.json saw


def batch_bucket(n: int) -> int:
    bucket = 1
    while bucket < n:
        bucket *= 4
    return bucket


def _shipped() -> dict:
    """Shipped choices by card-less key (stage/size/bucket/dtype) and card signature."""
    global _shipped_table
    if _shipped_table is None:
        with open(os.path.join(os.path.dirname(__file__), "tuned_configs.json")) as f:
            _shipped_table = {}
            for key, config in json.load(f).items():
                _shipped_table.setdefault(key.rsplit("/", 1)[0], config)
    return _shipped_table


def _shipped_config(key: str, device) -> tuple | None:
    """A shipped choice for `key`, if this card is a Hopper with the SMs they were tuned on."""
    if os.environ.get("INCEPTION_FAST_AUTOTUNE") == "force" or not _same_card(device):
        return None
    hit = _shipped().get(key.rsplit("/", 1)[0])
    return tuple(hit) if hit is not None else None


def _same_card(device) -> bool:
    props = torch.cuda.get_device_properties(device)
    return (props.major, props.minor, props.multi_processor_count) == SHIPPED_FOR


def _split(key: str) -> tuple[str, int, str] | None:
    """(stage/size, bucket, dtype/card) of a key `signature/HxW/bB/dtype/card`; None for a key
    of another form (an older version's, in a cache that outlived it)."""
    parts = key.split("/", 3)
    if len(parts) != 4 or not parts[2].startswith("b") or not parts[2][1:].isdigit():
        return None
    signature, size, bucket, rest = parts
    return f"{signature}/{size}", int(bucket[1:]), rest


def _index_of(entries: dict) -> dict:
    """(stage/size, dtype/card or dtype) -> {bucket: config} of a table of choices: a first call
    looks up dozens of stages in a table of thousands of keys."""
    index: dict = {}
    for key, config in entries.items():
        parsed = _split(key)
        if parsed is not None:
            index.setdefault((parsed[0], parsed[2]), {})[parsed[1]] = config
    return index


_cached_by_stage = cache.IndexOfLatest(_index_of)  # the cache's table
_shipped_by_stage = cache.IndexOfLatest(_index_of)  # the shipped table


def _nearest_bucket(key: str, device, configs: list[tuple]) -> tuple | None:
    """A choice for the same stage, size, dtype and card at the nearest batch bucket (cached,
    or shipped for this kind of card): tile shapes that fit a batch of 256 fit 2048 too."""
    parsed = _split(key)
    if parsed is None:
        return None
    stage, bucket, rest = parsed
    found = dict(_cached_by_stage(cache.TUNING.entries()).get((stage, rest), {}))
    if not found and _same_card(device) and os.environ.get("INCEPTION_FAST_AUTOTUNE") != "force":
        found = dict(_shipped_by_stage(_shipped()).get((stage, rest.split("/", 1)[0]), {}))
    usable = {b: tuple(c) for b, c in found.items() if tuple(c) in configs}
    if not usable:
        return None
    # A split-K choice made for a small batch would waste a large one: prefer the nearest
    # bucket on the same side of SMALL_BATCH.
    def distance(b: int) -> tuple:
        return ((b <= SMALL_BATCH) != (bucket <= SMALL_BATCH), abs(b.bit_length() - bucket.bit_length()))

    return usable[min(usable, key=distance)]


def default_config(configs: list[tuple], tiles, sms: int = 132) -> tuple:
    """Without timing, the shape of the choices tuned on Hopper: the widest tile that still
    gives every SM two tiles; 64x64 tiles when even those are few, their K loop split so the
    tiles fill the SMs (small batches). `tiles(block_m, block_n)`: the stage's tile count."""
    def first(*wanted) -> tuple | None:
        for want in wanted:
            hit = next((c for c in configs if c[:2] == want[:2] and c[5] == want[5]), None)
            if hit is not None:
                return hit
        return None

    for block_m, block_n in ((128, 256), (128, 128), (128, 64)):
        if tiles(block_m, block_n) >= 2 * sms:
            found = first((block_m, block_n, 0, 0, 0, 1))
            if found:
                return found
    small = tiles(64, 64)
    parts = 1
    while parts < 8 and small * parts * 2 <= sms:
        parts *= 2
    return first((64, 64, 0, 0, 0, parts), (64, 64, 0, 0, 0, 1)) or configs[0]


def _time(launch, config, reps: int = 20) -> float:
    """Median ms of one launch, replayed from a CUDA graph of `reps` launches: small launches
    take less GPU time than the host needs to issue them, so timing plain launches would time
    the host. The warm-up compiles and allocates what the config needs."""
    graph, _ = timing.capture_graph(lambda: [launch(config) for _ in range(reps)], warmup=1)
    graph.replay()
    return sorted(timing.replay_ms(graph, 3))[1] / reps


def can_time() -> bool:
    """Whether launches can be timed and their configs kept now: not while torch.compile traces,
    a CUDA graph records or a compile-only pass runs (`compile_only`: nothing launches)."""
    return not (torch.compiler.is_compiling() or capturing() or compile_only.active())


def enabled() -> bool:
    """Whether a first call may time tile configs (INCEPTION_FAST_AUTOTUNE=1 or force)."""
    return os.environ.get("INCEPTION_FAST_AUTOTUNE", "") in ("1", "force")


def choose(key: str, launch, configs: list[tuple], fallback: tuple, device=None) -> tuple:
    """The config for `key`: cached, shipped, cached or shipped at the nearest batch bucket,
    or (only where tuning is enabled) time every config with `launch(config)` and cache the
    fastest; else `fallback`. Never times where `can_time()` says no."""
    hit = cache.TUNING.get(key)  # validated on read: six positive ints
    if hit is not None:
        return tuple(hit)
    shipped = _shipped_config(key, device)
    if shipped is not None and shipped in configs:
        return shipped
    if not enabled() or not can_time():
        return _nearest_bucket(key, device, configs) or fallback
    print(f"inception_fast: tuning {key} over {len(configs)} tile configs", file=sys.stderr)
    timings = {}
    for config in configs:
        try:
            timings[config] = _time(launch, config)
        except Exception as err:  # noqa: BLE001 - a config can exceed shared memory
            print(f"inception_fast:   {config} skipped ({type(err).__name__})", file=sys.stderr)
    best = min(timings, key=timings.get) if timings else fallback
    cache.TUNING.put(key, list(best))  # merged with other processes' choices
    return best
