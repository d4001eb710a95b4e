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


def test_shipped_table_covers_the_network_and_holds_candidates():
    with open(os.path.join(os.path.dirname(tuning.__file__), "tuned_configs.json")) as f:
        table = json.load(f)
    stages = {key.split("/")[0] + "/" + key.split("/")[1] for key in table}
    assert len(stages) == 30  # 28 block stages + the head's two
    for key, config in table.items():
        bucket = int(key.split("/")[3][1:])
        assert len(config) == 6, key
        assert config[5] == 1 or bucket <= tuning.SMALL_BATCH, key
