"""Tile-config choice for the Triton stage kernel: batch buckets, candidate lists and the
shipped table (no GPU needed)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("triton")

from inception_fast.kernels.triton import tuning


def test_batch_buckets_are_powers_of_four():
    assert [tuning.batch_bucket(n) for n in (1, 2, 4, 5, 16, 17, 64, 65, 256, 2048)] == [
        1, 4, 4, 16, 16, 64, 64, 256, 256, 4096,
    ]


def test_block_k_never_much_wider_than_the_channels():
    assert {c[2] for c in tuning.candidates(8, 256)} == {16}
    assert {c[2] for c in tuning.candidates(32, 256)} == {32}
    assert {c[2] for c in tuning.candidates(192, 256)} == {32, 64}


def test_fp32_tiles_fit_shared_memory():
    for config in tuning.candidates(192, 256, element_size=4) + tuning.candidates(384, 1, element_size=4):
        bm, bn, bk, _warps, stages, _parts = config
        assert (bm + bn) * bk * 4 * stages <= 160 * 1024, config


def test_split_k_only_for_small_batches_with_convs():
    assert any(c[5] > 1 for c in tuning.candidates(384, 1))
    assert all(c[5] == 1 for c in tuning.candidates(384, 256))
    assert all(c[5] == 1 for c in tuning.candidates(384, 1, has_conv=False))


def _inception_v4_stages_at_299() -> set:
    """`signature/HxW` of every stage of Inception-v4 at 299x299, as the Triton backend keys them."""
    import torch

    import inception_fast
    from inception_fast import packing

    network = inception_fast.optimize(inception_fast.inception_v4(), backend="torch")
    keys, height, width = set(), 299, 299
    for block in network.blocks:
        padded = 8 if block.plan.in_channels == 3 else None
        for stage in packing.pack_block(block, "cpu", torch.float32, padded, height, width):
            keys.add(f"{packing.stage_signature(stage)}/{height}x{width}")
        height, width = block.output_hw(height, width)
    return keys


def test_shipped_table_covers_the_network_and_holds_candidates():
    with open(os.path.join(os.path.dirname(tuning.__file__), "tuned_configs.json")) as f:
        table = json.load(f)
    stages = {"/".join(key.split("/")[:2]) for key in table}
    assert _inception_v4_stages_at_299() <= stages  # every stage of the network
    for key, config in table.items():
        bucket = int(key.split("/")[2][1:])
        assert len(config) == 6, key
        assert config[5] == 1 or bucket <= tuning.SMALL_BATCH, key


def test_heuristic_takes_wide_tiles_for_big_stages_and_splits_k_for_small_ones():
    big = tuning.candidates(1024, tuning.batch_bucket(256), True, 2)
    assert tuning.default_config(big, lambda bm, bn: 10_000 // (bm * bn // 4096)) == (128, 256, 64, 8, 3, 1)
    small = tuning.candidates(1024, tuning.batch_bucket(1), True, 2)
    chosen = tuning.default_config(small, lambda bm, bn: 12 if (bm, bn) == (64, 64) else 3)
    assert chosen[:2] == (64, 64) and chosen[5] == 8  # 12 tiles x 8 parts fill 132 SMs
    assert chosen in small
    medium = tuning.default_config(small, lambda bm, bn: 40 if (bm, bn) == (64, 64) else 10)
    assert medium[5] == 2


def test_nearest_bucket_skips_keys_of_an_older_form(monkeypatch):
    """A user's cache may hold an older version's keys (block names, not stage signatures)."""
    from inception_fast import cache

    monkeypatch.setattr(cache.TUNING, "entries", lambda: {
        "InceptionA384-384/s0/35x35/b1/float16/card": [64, 64, 64, 4, 4, 1],
        "conv1x1s1p0.0:384>320/35x35/b256/float16/card": [128, 256, 64, 8, 3, 1],
    })
    monkeypatch.setattr(tuning, "_same_card", lambda device: False)
    configs = tuning.candidates(384, 1024, True, 2)
    key = "conv1x1s1p0.0:384>320/35x35/b1024/float16/card"
    assert tuning._nearest_bucket(key, None, configs) == (128, 256, 64, 8, 3, 1)
    assert tuning._nearest_bucket("InceptionA384-384/s0/35x35/b4/float16/card", None, configs) is None


@pytest.mark.parametrize("same_card", [True, False])
def test_a_first_call_at_an_untuned_batch_never_times(monkeypatch, same_card):
    """Batch 2048 with nothing cached: a shipped choice at the nearest bucket (a card like the
    shipped table's) or the heuristic fallback, and not one launch timed."""
    from inception_fast import cache

    monkeypatch.delenv("INCEPTION_FAST_AUTOTUNE", raising=False)
    monkeypatch.setattr(cache.TUNING, "entries", dict)
    monkeypatch.setattr(cache.TUNING, "get", lambda key: None)
    monkeypatch.setattr(tuning, "_same_card", lambda device: same_card)

    timed = []  # choose() skips a config whose timing raises: record, do not raise
    monkeypatch.setattr(tuning, "_time", lambda launch, config: timed.append(config))
    with open(os.path.join(os.path.dirname(tuning.__file__), "tuned_configs.json")) as f:
        shipped = next(k for k in json.load(f) if "/b256/float16/" in k)
    key = shipped.replace("/b256/", "/b4096/")  # no bucket this large is shipped
    configs = tuning.candidates(64, 4096, True, 2)
    fallback = configs[-1]
    chosen = tuning.choose(key, timed.append, configs, fallback)
    assert timed == [] and chosen in configs
    if same_card:
        assert chosen != fallback  # the shipped neighbour, not the heuristic
    else:
        assert chosen == fallback


def test_nothing_is_timed_while_torch_compile_traces(monkeypatch):
    """Tuning on first use is on, but a trace takes the nearest shipped config or the fallback:
    timing would launch and capture kernels inside the trace."""
    from inception_fast import cache

    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "1")
    monkeypatch.setattr(cache.TUNING, "get", lambda key: None)
    monkeypatch.setattr(tuning, "_shipped_config", lambda key, device: None)
    monkeypatch.setattr(tuning, "_same_card", lambda device: False)
    monkeypatch.setattr(tuning.torch.compiler, "is_compiling", lambda: True)
    timed = []
    monkeypatch.setattr(tuning, "_time", lambda launch, config: timed.append(config) or 1.0)
    configs = [(128, 128, 64, 8, 3, 1), (64, 64, 64, 4, 4, 1)]
    chosen = tuning.choose("conv1x1s1p0.0:384>320/35x35/b1/float16/nocard", None, configs, configs[0])
    assert timed == [] and chosen == configs[0]


def test_pool_tiles_fit_the_channels_and_shrink_for_small_batches():
    assert [tuning.pool_width(c) for c in (64, 96, 192, 384, 1024, 8, 24)] == [64, 32, 64, 64, 64, 8, 8]

    def tiles(pixels, channels):
        return lambda bm, bn: -(-pixels // bm) * -(-channels // bn)

    # InceptionA's average pool at batch 256: 96 channels, 313,600 pixels
    assert tuning.pool_config(96, tiles(313_600, 96)) == (64, 32, 16, 4, 1, 1)
    # ... at batch 1 (1,225 pixels, 3 column tiles): 16 rows make 231 tiles, 32 rows 117 < 132 SMs
    assert tuning.pool_config(96, tiles(1_225, 96))[:2] == (16, 32)
    assert tuning.pool_config(1024, tiles(64 * 256, 1024))[:2] == (32, 64)
    for channels in (64, 96, 1024, 8):
        configs = tuning.pool_candidates(channels, 256)
        assert tuning.pool_config(channels, tiles(313_600, channels)) in configs
        assert tuning.pool_config(channels, tiles(100, channels)) in configs
        conv_tiles = tuning.candidates(64, 256, False)
        # the conv tiles stay candidates: a shipped or cached choice may name one
        assert configs[-len(conv_tiles):] == conv_tiles
        pool_tiles = configs[:-len(conv_tiles)]
        assert {c[1] for c in pool_tiles} == {tuning.pool_width(channels)}
        assert all(16 <= c[0] and c[0] * c[1] <= 8192 for c in pool_tiles)
