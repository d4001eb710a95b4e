"""A first call on nothing cached but the CUDA extension: Inception-v4 through `optimize()`
(backend auto) in fresh processes, as `inception-fast ttfi` runs them, with empty Triton,
Inductor and choice caches, each of: the Triton kernels compiled one by one as launched
(INCEPTION_FAST_COMPILE_WORKERS=0) or ahead in worker processes (the default), with `auto`'s
shipped table set aside or in place. The extension comes ready-built from the cache directory
given, as it does from `pip install`, so what is timed is what a user's first call waits for;
where the installed packages carry no bytecode, an untimed run fills a shared bytecode
directory first (as `inception-fast ttfi` does: `pip install` writes it).
With --warm-batch, a first call at that batch then runs twice on one set of caches: cold, then
warm (the time to first inference of a process that finds everything cached).

    python benchmarks/device/first_call.py --build-cache DIR [--batch 2048] [--dtype fp16]
        [--default-only] [--warm-batch 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inception_fast import first_inference
from inception_fast.backends import shipped_choices


def run(batch: int, dtype: str, build_cache: Path, workers: str, shipped: bool, root: str,
        bytecode_dir: str | None) -> dict:
    table, aside = shipped_choices.TABLE, shipped_choices.TABLE.with_suffix(".aside")
    os.environ["INCEPTION_FAST_COMPILE_WORKERS"] = workers
    build = Path(first_inference.cache_env(root)["INCEPTION_FAST_CACHE_DIR"]) / "build"
    if not build.exists():  # the extension comes ready-built; the other caches start empty
        build.symlink_to(build_cache / "build")
    if not shipped:
        table.rename(aside)
    try:
        result = first_inference.measure(
            "fused", cache_root=root, backend="auto", device="cuda", dtype=dtype, batch=batch,
            bytecode_dir=bytecode_dir,
        )
    finally:
        if not shipped:
            aside.rename(table)
    steps = result.get("steps_s", {})
    first_call = steps["first_logits"] - steps["prepared"] if steps else None
    return {"batch": batch, "dtype": dtype, "compile_workers": workers, "shipped_choices": shipped,
            "bytecode": "installed" if bytecode_dir is None else "primed", "first_call_s": first_call,
            **result}


def report(label: str, row: dict) -> None:
    if "error" in row:
        print(f"{label}: {row['error']}", flush=True)
    else:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in row["steps_s"].items())
        print(f"{label}: {row['seconds']:.1f} s to first logits, first call "
              f"{row['first_call_s']:.1f} s ({steps})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-cache", type=Path, required=True,
                        help="an INCEPTION_FAST_CACHE_DIR whose build/ holds the extension")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--default-only", action="store_true",
                        help="only the default setting (workers on, shipped table in place)")
    parser.add_argument("--warm-batch", type=int, default=0,
                        help="then a first call at this batch twice on the same caches: cold, warm")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    bytecode_root = tempfile.TemporaryDirectory(prefix="first-call-bytecode-")
    # No measured process compiles torch's sources again (seconds an installed torch never costs).
    bytecode_dir = first_inference.primed_bytecode(
        bytecode_root.name,
        lambda caches, primed: run(1, args.dtype, args.build_cache, "", True, caches, primed),
    )
    settings = [(True, "")] if args.default_only else [(s, w) for s in (False, True) for w in ("0", "")]
    for shipped, workers in settings:
        with tempfile.TemporaryDirectory(prefix="first-call-") as root:
            row = run(args.batch, args.dtype, args.build_cache, workers, shipped, root, bytecode_dir)
        rows.append(row)
        report(f"workers={workers or 'default'} shipped={'on' if shipped else 'off'}", row)
    if args.warm_batch:
        with tempfile.TemporaryDirectory(prefix="first-call-") as root:
            for caches in ("cold", "warm"):  # the second process finds what the first cached
                row = run(args.warm_batch, args.dtype, args.build_cache, "", True, root, bytecode_dir)
                rows.append({**row, "caches": caches})
                report(f"batch {args.warm_batch}, {caches} caches", row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
