"""backend="auto": one timing per block, batch bucket, dtype and card, remembered on disk."""

from __future__ import annotations

import json

import pytest
import torch

from inception_fast import reference as R
from inception_fast.backends import auto_backend
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm, relative_l2


@pytest.fixture(autouse=True)
def fresh_cache(fresh_backend_choices):
    return fresh_backend_choices


def test_batch_buckets_are_powers_of_two():
    batches = (1, 2, 3, 5, 32, 33, 256, 2048)
    assert [auto_backend.batch_bucket(n) for n in batches] == [1, 2, 4, 8, 32, 64, 256, 2048]


def test_exact_fp32_and_tf32_are_chosen_apart(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    x = torch.empty(3, 8, 5, 5)
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        tf32 = auto_backend._key("Block", x)
        torch.backends.cudnn.allow_tf32 = False
        exact = auto_backend._key("Block", x)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    assert tf32 != exact and "|float32|" in tf32 and "|float32-ieee|" in exact
    assert "|float16|" in auto_backend._key("Block", x.half())


def test_choices_merge_into_one_file_and_read_back_as_a_table(fresh_cache):
    a = "NVIDIA H100|torch2.11.0|float16|InceptionB1024-1024@17x17|b32"
    b = "NVIDIA H100|torch2.11.0|bfloat16|Head1536-1000@8x8|b1"
    auto_backend._save(a, {"backend": "cuda", "ms": {"cuda": 0.5, "triton": 0.6}})
    auto_backend._save(b, {"backend": "triton", "ms": {"cuda": 0.02, "triton": 0.01}})
    assert set(json.loads(auto_backend.cache_file().read_text())) == {a, b}
    table = auto_backend.choice_table()
    assert [(r["block"], r["batch_bucket"], r["backend"]) for r in table] == [
        ("Head1536-1000@8x8", 1, "triton"), ("InceptionB1024-1024@17x17", 32, "cuda"),
    ]
    assert table[1]["ms"] == {"cuda": 0.5, "triton": 0.6} and table[1]["torch"] == "2.11.0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_unavailable_without_a_gpu_says_why():
    ok, reason = auto_backend.availability("cpu")
    assert not ok and "triton" in reason and "cuda" in reason


@pytest.mark.cuda
@torch.no_grad()
def test_block_is_timed_once_per_bucket_and_matches_torch():
    torch.manual_seed(0)
    block = fuse_block(randomize_batchnorm(R.InceptionA()).eval().cuda()).half()
    x = torch.randn(3, 384, 35, 35, device="cuda").relu_().half()
    expected = block(x)
    out = auto_backend.run_block(block, x)
    assert relative_l2(out, expected) < 5e-3
    auto_backend.run_block(block, x[:4])  # bucket 4 again: no new timing
    table = auto_backend.choice_table()
    assert len(table) == 1 and table[0]["batch_bucket"] == 4
    assert table[0]["backend"] in auto_backend.CANDIDATES
    assert set(table[0]["ms"]) == set(auto_backend._usable(x.device))
    auto_backend.run_block(block, x[:1])
    assert len(auto_backend.choice_table()) == 2


@pytest.mark.cuda
@torch.no_grad()
def test_whole_model_on_auto(calibrated_model):
    import copy

    from inception_fast import optimize

    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(2, 3, 299, 299, device="cuda")
    ref = model(x)
    eager_err = relative_l2(copy.deepcopy(model).half()(x.half()), ref)
    fused = optimize(model, backend="auto", dtype=torch.float16)
    assert relative_l2(fused(x.half()), ref) <= 2 * eager_err + 1e-3
    assert len(auto_backend.choice_table()) >= 1


def test_experiments_join_the_candidates_only_where_named():
    assert auto_backend.candidates(None) == ("triton", "triton-gemm", "cuda", "torch")
    assert auto_backend.candidates("") == ("triton", "triton-gemm", "cuda", "torch")
    assert auto_backend.candidates(" triton-tma ,triton-block") == (
        "triton", "triton-gemm", "cuda", "triton-block", "triton-tma", "torch")
    with pytest.raises(ValueError, match=r"INCEPTION_FAST_AUTO_EXPERIMENTS='tma': tma is not an experimental "
                                         r"backend; name any of triton-block, triton-tma"):
        auto_backend.candidates("tma")


def test_a_candidate_new_to_an_entry_is_timed_and_added(monkeypatch):
    """An entry made before an experiment was switched on (or the extension built) lacks a
    backend usable now: that backend alone is timed and added, so processes with other
    candidates add to one entry instead of timing everything again, each in turn."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    timed = []

    def fake_median_ms(run, x):
        timed.append(run)
        return run(x)

    monkeypatch.setattr(auto_backend, "_median_ms", fake_median_ms)
    monkeypatch.setattr(auto_backend, "_can_time", lambda: True)
    x = torch.empty(2, 8, 5, 5)
    plain = {"triton": lambda x: 2.0, "torch": lambda x: 3.0}
    with_tma = {**plain, "triton-tma": lambda x: 1.0}
    assert auto_backend.choose("Block", x, plain) == "triton" and len(timed) == 2
    assert auto_backend.choose("Block", x, plain) == "triton" and len(timed) == 2  # cached
    assert auto_backend.choose("Block", x, with_tma) == "triton-tma" and len(timed) == 3
    for _ in range(2):  # processes with and without the experiment, in turn: no more timing
        assert auto_backend.choose("Block", x, plain) == "triton"
        assert auto_backend.choose("Block", x, with_tma) == "triton-tma"
    assert len(timed) == 3
    (row,) = auto_backend.choice_table()
    assert row["ms"] == {"triton": 2.0, "torch": 3.0, "triton-tma": 1.0}


def test_timing_says_so_once_per_batch_bucket(monkeypatch, capsys):
    """A first call at a new size times every block: one progress line says so, not one per
    block, and nothing is printed where the choices are already known."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    monkeypatch.setattr(auto_backend, "_median_ms", lambda run, x: run(x))
    monkeypatch.setattr(auto_backend, "_can_time", lambda: True)
    monkeypatch.setattr(auto_backend, "_announced", set())
    runners = {"triton": lambda x: 2.0, "torch": lambda x: 3.0}
    for kind in ("BlockA", "BlockB"):
        auto_backend.choose(kind, torch.empty(3, 8, 5, 5), runners)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "timing triton, torch per block for batch 3 (float32)" in lines[0]
    auto_backend.choose("BlockA", torch.empty(4, 8, 5, 5), runners)  # same bucket, known
    auto_backend.choose("BlockA", torch.empty(5, 8, 5, 5), runners)  # a new bucket: timed
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_without_timing_the_fastest_timed_usable_backend_runs(monkeypatch):
    """Under graph capture or tracing nothing is timed: the remembered times still choose."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    monkeypatch.setattr(auto_backend, "_can_time", lambda: False)
    x = torch.empty(2, 8, 5, 5)
    key = auto_backend._key("Block", x)
    auto_backend._save(key, {"backend": "triton-tma", "ms": {"triton-tma": 1.0, "cuda": 1.5, "torch": 3.0}})
    runners = {"triton": None, "cuda": None, "torch": None}
    assert auto_backend.choose("Block", x, runners) == "cuda"
    assert auto_backend.choose("Other", x, runners) == "triton"  # nothing known: the first usable


def test_a_block_keeps_its_choice_per_input_kind(monkeypatch):
    """Only the first call of a block at an input kind chooses (keys, plan digest, cache file);
    later calls find the choice on the block."""
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run_block(self, block, x):
            return self.name

    fakes = {"triton": Fake("triton"), "torch": Fake("torch")}
    monkeypatch.setattr(auto_backend, "_backends", lambda block, device: fakes)
    monkeypatch.setattr(auto_backend, "get_backend", fakes.__getitem__)
    monkeypatch.setattr(auto_backend, "_can_time", lambda: True)
    monkeypatch.setattr(auto_backend, "choose", lambda kind, x, runners: calls.append(kind) or "torch")
    block = fuse_block(randomize_batchnorm(R.InceptionA().eval()))
    x = torch.empty(3, 384, 7, 7)
    assert [auto_backend.run_block(block, x) for _ in range(3)] == ["torch"] * 3 and len(calls) == 1
    auto_backend.run_block(block, torch.empty(5, 384, 7, 7))  # batch bucket 8, not 4
    auto_backend.run_block(block, torch.empty(3, 384, 9, 9))  # another size
    auto_backend.run_block(block, x.half())  # another dtype
    assert len(calls) == 4
    monkeypatch.setattr(auto_backend, "_can_time", lambda: False)  # e.g. under graph capture
    auto_backend.run_block(block, torch.empty(3, 384, 11, 11))
    auto_backend.run_block(block, torch.empty(3, 384, 11, 11))
    assert len(calls) == 6  # nothing kept from an untimed choice
