"""backend="auto" on the kind of card its shipped table was measured on: a first call picks
each block's backend from the table without timing anything."""

from __future__ import annotations

import json

import pytest
import torch

from inception_fast.backends import auto_backend, shipped_choices

CARD = {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "sms": 132}
BLOCK = "InceptionA384-384-abc@35x35"
TABLE = {"card": CARD, "choices": {
    f"float16|{BLOCK}|b32": {"triton": 0.30, "triton-gemm": 0.25, "cuda": 0.5, "torch": 0.4},
    f"float16|{BLOCK}|b256": {"triton": 1.9, "triton-gemm": 2.0, "cuda": 3.0, "torch": 2.1},
    f"bfloat16|{BLOCK}|b32": {"triton": 0.2, "cuda": 0.5, "torch": 0.4},
}}


@pytest.fixture
def shipped(monkeypatch, fresh_backend_choices):
    monkeypatch.setattr(shipped_choices, "_table", TABLE)
    monkeypatch.setattr(shipped_choices, "_same_card", lambda device: True)
    monkeypatch.delenv("INCEPTION_FAST_AUTOTUNE", raising=False)


def lookup(precision="float16", bucket=32, usable=("triton", "torch")):
    return shipped_choices.lookup("cuda", precision, BLOCK, bucket, usable)


def test_the_bucket_or_the_nearest_one(shipped):
    assert lookup(bucket=32)["triton-gemm"] == 0.25
    assert lookup(bucket=16)["triton-gemm"] == 0.25  # nearest: 32
    assert lookup(bucket=2048)["triton"] == 1.9  # nearest: 256
    assert lookup(bucket=128)["triton"] == 1.9  # one step from 256, two from 32


def test_nothing_where_the_table_does_not_apply(shipped, monkeypatch):
    assert lookup(precision="float32") is None  # no entry for this dtype
    assert shipped_choices.lookup("cuda", "float16", "InceptionA384-384-abc@17x17", 32, ("triton",)) is None
    # A usable backend the table has no time for (an experiment, say): time them all here.
    assert lookup(precision="bfloat16", usable=("triton", "triton-gemm")) is None
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "force")
    assert lookup() is None
    monkeypatch.delenv("INCEPTION_FAST_AUTOTUNE")
    monkeypatch.setattr(shipped_choices, "_same_card", lambda device: False)  # another card
    assert lookup() is None


def test_only_cuda_devices_of_the_tables_kind(monkeypatch):
    monkeypatch.setattr(shipped_choices, "_table", TABLE)
    assert not shipped_choices._same_card("cpu")
    monkeypatch.setattr(shipped_choices, "_table", {"card": None, "choices": {}})
    assert not shipped_choices._same_card("cuda")


def test_a_first_call_chooses_from_the_table_without_timing(shipped, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    monkeypatch.setattr(auto_backend, "_can_time", lambda: True)
    monkeypatch.setattr(auto_backend, "_median_ms", lambda run, x: pytest.fail("timed a shipped choice"))
    x = torch.empty(20, 384, 35, 35, dtype=torch.float16)
    runners = {name: None for name in ("triton", "triton-gemm", "cuda", "torch")}
    assert auto_backend.choose("InceptionA384-384-abc", x, runners) == "triton-gemm"
    del runners["triton-gemm"]  # the extension without the CUTLASS ops: the fastest of the rest
    assert auto_backend.choose("InceptionA384-384-abc", x, runners) == "triton"
    assert auto_backend.choose("InceptionA384-384-abc", x[:1].expand(200, -1, -1, -1), runners) == "triton"
    assert auto_backend.choice_table() == []  # the table is the record: nothing cached


def test_a_cached_entry_wins_over_the_table(shipped, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "card")
    x = torch.empty(20, 384, 35, 35, dtype=torch.float16)
    key = auto_backend._key("InceptionA384-384-abc", x)
    auto_backend._save(key, {"backend": "cuda", "ms": {"triton": 1.0, "cuda": 0.1, "torch": 2.0}})
    runners = dict.fromkeys(("triton", "cuda", "torch"))
    assert auto_backend.choose("InceptionA384-384-abc", x, runners) == "cuda"


def test_merge_keeps_one_cards_entries():
    autoselect = {
        "NVIDIA H100 80GB HBM3|torch2.11.0+cu130|float16|Head1536-1000-x@8x8|b1":
            {"backend": "triton", "ms": {"triton": 0.01, "torch": 0.02}},
        "NVIDIA H200|torch2.11.0+cu130|float16|Head1536-1000-x@8x8|b1":
            {"backend": "torch", "ms": {"triton": 0.03, "torch": 0.02}},
    }
    merged = shipped_choices.merge(autoselect, {}, CARD)
    assert merged == {"card": CARD, "choices": {
        "float16|Head1536-1000-x@8x8|b1": {"triton": 0.01, "torch": 0.02}}}
    with pytest.raises(ValueError, match="holds choices for"):
        shipped_choices.merge(autoselect, merged, {**CARD, "sms": 114})


def test_info_says_what_the_table_holds_and_whether_it_applies(monkeypatch):
    monkeypatch.setattr(shipped_choices, "_table", TABLE)
    line = shipped_choices.describe("cpu")
    assert "3 entries measured on NVIDIA H100 80GB HBM3 (compute capability 9.0, 132 SMs)" in line
    assert line.endswith("; for GPUs")
    monkeypatch.setattr(shipped_choices, "_same_card", lambda device: False)
    assert shipped_choices.describe("cuda").endswith("not used on this card: its blocks are timed on their "
                                                     "first use")
    monkeypatch.setattr(shipped_choices, "_same_card", lambda device: True)
    assert shipped_choices.describe("cuda").endswith("; used on this card")
    monkeypatch.setattr(shipped_choices, "_table", {"card": None, "choices": {}})
    assert shipped_choices.describe("cuda") == "no shipped block times"


def test_the_shipped_table_covers_every_block_in_each_dtype_at_every_bucket():
    """fp16, bf16 and fp32 with TF32 ("float32"), the same blocks, batches 1 to 4096."""
    table = json.loads(shipped_choices.TABLE.read_text())
    buckets = {}
    for key in table["choices"]:
        precision, kind_at_size, bucket = key.split("|")
        buckets.setdefault(precision, {}).setdefault(kind_at_size, set()).add(int(bucket[1:]))
    assert set(buckets) == {"float16", "bfloat16", "float32"}
    assert buckets["float16"].keys() == buckets["bfloat16"].keys() == buckets["float32"].keys()
    every = {1 << i for i in range(13)}
    assert all(found == every for kinds in buckets.values() for found in kinds.values())


def test_the_reference_and_timm_inception_v4_find_every_block_in_the_table():
    """Blocks are keyed by what they compute, not by module names or branch order: the
    reference Inception-v4 (ConvBnRelu stems, InceptionC's 1x1 columns in another order) finds
    the entries timed on timm's, so its first call on such a card times nothing."""
    from inception_fast import bench_models, optimize
    from inception_fast.reference import inception_v4

    table = json.loads(shipped_choices.TABLE.read_text())
    shipped = {key.split("|")[1].split("@")[0] for key in table["choices"]}
    for model in (inception_v4(), bench_models.get("inception_v4").build()):
        fused = optimize(model.eval(), backend="torch")
        missing = {auto_backend.block_kind(block) for block in fused.blocks} - shipped
        assert not missing, missing
