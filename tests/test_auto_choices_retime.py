"""benchmarks/device/auto_choices.py --retime on the CPU: the fresh cache is seeded with the
shipped times minus the re-timed backend (so `auto` times only that one), the entries left
without a new time are dropped again, and the merge then changes only what was re-timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "device"))

import auto_choices

from inception_fast import cache
from inception_fast.backends import shipped_choices

CARD = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: CARD)
    monkeypatch.setattr(shipped_choices, "_table", None)  # the shipped file, read again
    cache.BACKEND_CHOICES.reset()
    yield tmp_path
    cache.BACKEND_CHOICES.reset()


def test_only_the_retimed_backend_is_missing_and_only_retimed_entries_are_merged(fresh_cache):
    shipped = shipped_choices._load()
    auto_choices._seed_without(["torch"])
    seeded = cache.BACKEND_CHOICES.entries()
    assert len(seeded) == len(shipped["choices"])
    assert all("torch" not in entry["ms"] and entry["backend"] in entry["ms"] for entry in seeded.values())

    # What `auto` does for one block: times the missing backend and saves the whole entry.
    key = next(iter(seeded))
    entry = {"ms": {**seeded[key]["ms"], "torch": 0.001}}
    cache.BACKEND_CHOICES.put(key, {"backend": "torch", **entry})
    auto_choices._drop_without(["torch"])
    kept = json.loads(cache.BACKEND_CHOICES.path().read_text())
    assert list(kept) == [key]

    merged = shipped_choices.merge(kept, shipped, shipped["card"])
    changed = [k for k, ms in merged["choices"].items() if ms != shipped["choices"][k]]
    assert len(changed) == 1 and merged["choices"][changed[0]]["torch"] == 0.001
    assert key.endswith(changed[0])


def test_a_used_cache_directory_is_refused(fresh_cache):
    cache.BACKEND_CHOICES.path().write_text("{}")
    with pytest.raises(SystemExit, match="fresh cache directory"):
        auto_choices._seed_without(["torch"])
