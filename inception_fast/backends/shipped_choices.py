"""backend="auto"'s choices as measured on one kind of card and shipped with the package
(`shipped_choices.json`), so that a first call at any batch size on such a card picks each
block's backend without timing: a table of the block timings `auto` made there, keyed by
dtype, block@size and batch bucket, with the card's compute capability and SM count.

A lookup takes the entry for the bucket, else the nearest shipped bucket of the same block,
size and dtype (a choice made at batch 2048 holds at 4096); it gives nothing on another kind
of card, where a backend a block lacks a time for is usable here, or with
INCEPTION_FAST_AUTOTUNE=force (time everything anew). The table is remade on a GPU with

    INCEPTION_FAST_CACHE_DIR=dir python benchmarks/device/auto_choices.py
    python -m inception_fast.backends.shipped_choices dir/autoselect.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .. import cache

TABLE = Path(__file__).with_name("shipped_choices.json")
_table: dict | None = None


def _load() -> dict:
    global _table
    if _table is None:
        _table = json.loads(TABLE.read_text()) if TABLE.exists() else {"card": None, "choices": {}}
    return _table


def _applies(device) -> bool:
    return os.environ.get("INCEPTION_FAST_AUTOTUNE") != "force" and _same_card(device)


def _same_card(device) -> bool:
    card = _load()["card"]
    if card is None or torch.device(device).type != "cuda":
        return False
    props = torch.cuda.get_device_properties(device)
    return [props.major, props.minor, props.multi_processor_count] == [*card["capability"], card["sms"]]


def describe(device) -> str:
    """One line for `inception-fast info`: what the table holds and whether it is used here."""
    table = _load()
    card = table["card"]
    if card is None:
        return "no shipped block times"
    if torch.device(device).type != "cuda":
        where = "for GPUs"
    elif _applies(device):
        where = "used on this card"
    else:
        where = "not used on this card: its blocks are timed on their first use"
    major, minor = card["capability"]
    return (f"shipped block times: {len(table['choices'])} entries measured on {card['name']} "
            f"(compute capability {major}.{minor}, {card['sms']} SMs); {where}")


def _bucket_distance(a: int, b: int) -> int:
    return abs(a.bit_length() - b.bit_length())


def lookup(device, precision: str, kind_at_size: str, bucket: int, usable) -> dict | None:
    """The shipped times {backend: ms} for `kind_at_size` ("<block kind>@HxW") at `bucket`, or
    the nearest shipped bucket; None where the table does not apply (see the module doc)."""
    if not _applies(device):
        return None
    found = _by_block(_load()).get(f"{precision}|{kind_at_size}")
    if not found:
        return None
    ms = found[min(found, key=lambda b: _bucket_distance(b, bucket))]
    return ms if all(name in ms for name in usable) else None


def _block_index(table: dict) -> dict:
    """"dtype|kind@HxW" -> {bucket: times} of `table` (a first call looks up every block in
    thousands of entries)."""
    index: dict = {}
    for key, ms in table["choices"].items():
        block, _, bucket = key.rpartition("|b")
        index.setdefault(block, {})[int(bucket)] = ms
    return index


_by_block = cache.IndexOfLatest(_block_index)


def merge(autoselect: dict, table: dict, card: dict) -> dict:
    """`table` with the entries of an `autoselect.json` (key "card|torch|dtype|kind@HxW|bN")
    measured on a card whose name is card["name"] added; other cards' entries are left out."""
    if table.get("card") not in (None, card):
        raise ValueError(f"the table holds choices for {table['card']}, not {card}")
    choices = dict(table.get("choices", {}))
    for key, entry in autoselect.items():
        name, _torch, precision, kind_at_size, bucket = key.split("|")
        if name == card["name"]:
            choices[f"{precision}|{kind_at_size}|{bucket}"] = entry["ms"]
    return {"card": card, "choices": dict(sorted(choices.items()))}


def main(argv: list[str]) -> int:
    """python -m inception_fast.backends.shipped_choices AUTOSELECT.json [NAME CC_MAJOR CC_MINOR SMS]:
    merge the measured choices into the shipped table (default card: an H100 SXM, 9.0, 132 SMs)."""
    if not argv:
        print(main.__doc__, file=sys.stderr)
        return 2
    name, major, minor, sms = argv[1:5] if len(argv) >= 5 else ("NVIDIA H100 80GB HBM3", 9, 0, 132)
    card = {"name": name, "capability": [int(major), int(minor)], "sms": int(sms)}
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    merged = merge(json.loads(Path(argv[0]).read_text()), table, card)
    TABLE.write_text(json.dumps(merged, indent=0, sort_keys=True) + "\n")
    print(f"{TABLE.name}: {len(merged['choices'])} entries for {card['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
