"""The README's results from the JSON under benchmarks/results/: tables and a plot per model.

    python benchmarks/make_report.py                       # reads benchmarks/results/*.json
    python benchmarks/make_report.py --results-dir OUT --out OUT --readme benchmarks/README.md

Writes `<out>/summary.md` (per model: the whole-model table with the anchor named, Inception-v4's
targets, the cuDNN conv floor per block; time to first inference; Inception-v4's blocks against
their compute and memory floors) and `<out>/images_per_s-<card>[-<model>].png` (images/s against
batch size, fused and anchors). With --readme, the summary replaces the text between the
`<!-- results:begin -->` and `<!-- results:end -->` markers of that file.
Both sources are read: `inception-fast bench --json` and `pytest benchmarks/` (schemas
`inception_fast.bench/1`, Inception-v4 only, and `/2`, any model); where the same configuration
was measured more than once on a card, the newest measurement is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from floors import block_floors, peaks_for

from inception_fast.bench_models import MODELS

RESULTS_DIR = Path(__file__).parent / "results"
NO_PLOTS = False  # --no-plot
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# Issue #5: Inception-v4 on the H100, fp16, 299x299, side by side with the anchors in one run.
TARGET_MODEL = "inception_v4"
TARGET_MS = {1: 0.6, 32: 2.6, 256: 14.0}
TARGET_FIRST_INFERENCE_S = {"cold": 30.0, "warm": 5.0}


def readable_config(row: dict) -> str:
    """One name per configuration whichever tool measured it."""
    name, dtype = row["config"], row.get("dtype", "")
    layout = row.get("layout", "channels_last")
    layout = "" if layout == "contiguous" else f" {layout}"
    pytest_names = {
        "eager": f"timm eager {dtype}{layout}",
        "eager-graph": f"timm eager {dtype}{layout}, CUDA graph",
        "compile-default": f"torch.compile default, {dtype}{layout}",
        "compile-max-autotune": f"torch.compile max-autotune, {dtype}{layout}",
        "fused-triton-graph": "fused triton, CUDA graph (optimize)",
        "fused-cuda-graph": "fused cuda, CUDA graph (captured)",
    }
    if name in pytest_names:
        return pytest_names[name]
    if re.fullmatch(r"fused-\w+", name):
        return name.replace("-", " ")
    return name.replace(" (auto)", "")


def load(paths: list[Path]) -> list[dict]:
    documents = []
    for path in sorted(paths):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path}: {err}", file=sys.stderr)
            continue
        if document.get("schema", "").startswith("inception_fast.bench/"):
            document["path"] = str(path)
            documents.append(document)
    documents.sort(key=lambda d: d.get("created", ""))
    return documents


def model_of(row: dict, document: dict) -> str:
    """The network a row measured; schema /1 documents measured Inception-v4 only."""
    settings = document.get("settings", {})
    return row.get("model") or document.get("model") or settings.get("model") or TARGET_MODEL


def newest_rows(documents: list[dict], suite: str) -> dict:
    """{(card, model, config, dtype, batch, image_size): row}, later documents overwriting
    earlier ones."""
    rows = {}
    for document in documents:
        env = document["environment"]
        for row in document.get("results", []):
            if row.get("suite") != suite or "median_ms" not in row:
                continue
            name = readable_config(row) if suite == "model" else row.get("label", row["config"])
            model = model_of(row, document)
            key = (env["card"], model, name, row["dtype"], row["batch"], row["image_size"])
            rows[key] = {**row, "name": name, "card": env["card"], "model": model, "environment": env}
    return rows


def unsupported(documents: list[dict]) -> dict:
    """{(card, model): reason} of the newest documents that found a network not supported."""
    found = {}
    for document in documents:
        for row in document.get("results", []):
            key = (document["environment"]["card"], model_of(row, document))
            if row.get("status") == "not supported":
                found[key] = row.get("error", "not supported by this version")
            elif "median_ms" in row and row.get("kind") == "fused":
                found.pop(key, None)
    return found


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    mark = "" if row.get("check", "pass") == "pass" else " (accuracy FAIL)"
    return f"{row['median_ms']:.3f}{mark}"


def _order(name: str) -> tuple:
    """Fused rows first, the floor last, anchors between."""
    return (0 if name.startswith("fused") else 2 if "convs alone" in name else 1, name)


def model_table(rows: dict, card: str, model: str, dtype: str, image_size: int) -> list[str]:
    mine = {k: v for k, v in rows.items() if k[:2] == (card, model) and k[3] == dtype and k[5] == image_size}
    batches = sorted({k[4] for k in mine})
    names = sorted({k[2] for k in mine}, key=_order)
    env = next(iter(mine.values()))["environment"]
    on_gpu = env.get("device", "").startswith("cuda")
    timer = "CUDA events; L2 flushed; inputs rotated" if on_gpu else "perf_counter on the CPU"
    lines = [
        f"**{model}** on **{card}**, {dtype}, {image_size}x{image_size}: median ms ({timer}). "
        f"torch {env['torch']}, triton {env['triton']}, cuDNN {env['cudnn']}, "
        f"commit {str(env['commit'])[:10]}.",
        "",
        "| configuration | " + " | ".join(f"b={b} ms" for b in batches) + " | " +
        " | ".join(f"b={b} img/s" for b in batches) + " |",
        "|---|" + "---|" * (2 * len(batches)),
    ]
    for name in names:
        cells = [_cell(mine.get((card, model, name, dtype, b, image_size))) for b in batches]
        rates = [mine.get((card, model, name, dtype, b, image_size)) for b in batches]
        rates = [f"{r['images_per_s']:,.0f}" if r else "-" for r in rates]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(rates) + " |")
    targeted = model == TARGET_MODEL and image_size == 299 and dtype == "fp16"
    if targeted:
        lines.append("| **target** | " + " | ".join(
            f"<= {TARGET_MS[b]}" if b in TARGET_MS else "-" for b in batches) + " |" + " |" * len(batches))
    lines += ["", *anchor_lines(mine, batches, TARGET_MS if targeted else {})]
    return lines


def anchor_lines(mine: dict, batches: list[int], targets: dict) -> list[str]:
    """Per batch: the best fused configuration, the anchor (the fastest anchor) and the ratio;
    against the target where there is one."""
    lines = []
    for batch in batches:
        here = [r for k, r in mine.items() if k[4] == batch]
        fused = [r for r in here if r["kind"] == "fused" and r.get("check") == "pass"]
        anchors = [r for r in here if r["kind"] == "anchor"]
        anchor = min(anchors, key=lambda r: r["median_ms"]) if anchors else None
        if not fused:
            if anchor:
                lines.append(f"- batch {batch}: the anchor: {anchor['name']}, {anchor['median_ms']:.3f} ms; "
                             "no accurate fused measurement")
            continue
        best = min(fused, key=lambda r: r["median_ms"])
        against = ""
        if anchor:
            against = f"; the anchor: {anchor['name']} {anchor['median_ms']:.3f} ms " \
                      f"(fused at {anchor['median_ms'] / best['median_ms']:.2f}x its speed)"
        verdict = ""
        if batch in targets:
            target = targets[batch]
            verdict = f"; target {target} ms: " + ("met" if best["median_ms"] <= target else (
                f"MISSED by {best['median_ms'] - target:.3f} ms ({best['median_ms'] / target - 1:+.0%})"))
        fastest = f"best fused: {best['name']}, {best['median_ms']:.3f} ms"
        lines.append(f"- batch {batch}: {fastest}{verdict}{against}")
    return lines


def floor_table(rows: dict, card: str, model: str, dtype: str, image_size: int) -> list[str]:
    """The cuDNN conv floor per block (suite conv-floor), one column per batch size."""
    mine = {k: r for k, r in rows.items() if k[:2] == (card, model) and k[3] == dtype and k[5] == image_size}
    if not mine:
        return []
    batches = sorted({k[4] for k in mine})
    labels = list(dict.fromkeys(r["name"] for r in mine.values()))
    lines = [
        f"{next(iter(mine.values()))['config']} per block (ms; every conv timed alone, summed):",
        "",
        "| block | convs | GFLOP/img | " + " | ".join(f"b={b} ms" for b in batches) + " |",
        "|---|---|---|" + "---|" * len(batches),
    ]
    for label in labels:
        cells = [mine.get((card, model, label, dtype, b, image_size)) for b in batches]
        first = next(c for c in cells if c)
        lines.append(f"| {label} | {first['convs']} | {first['gflop_per_image']:.3f} | "
                     + " | ".join(f"{c['median_ms']:.4f}" if c else "-" for c in cells) + " |")
    totals = [sum(r["median_ms"] for k, r in mine.items() if k[4] == b) for b in batches]
    lines.append("| **total** | | | " + " | ".join(f"**{t:.3f}**" for t in totals) + " |")
    return lines


def first_inference_table(documents: list[dict]) -> list[str]:
    newest = {}
    for document in documents:
        card = document["environment"]["card"]
        for run in document.get("first_inference") or []:
            newest[(card, run["config"], run["cache"])] = run
    if not newest:
        return []
    lines = ["| card | configuration | cold s | warm s |", "|---|---|---|---|"]
    for card, config in sorted({(k[0], k[1]) for k in newest}):
        cells = []
        for cache in ("cold", "warm"):
            run = newest.get((card, config, cache))
            if run is None:
                cells.append("-")
            elif "seconds" in run:
                targeted = config == "fused" and re.search(r"H100|H200", card)
                limit = TARGET_FIRST_INFERENCE_S[cache] if targeted else None
                miss = f" (target {limit:g}: MISSED)" if limit and run["seconds"] > limit else ""
                cells.append(f"{run['seconds']:.1f}{miss}")
            else:
                cells.append(f"failed: {run['error'][:60]}")
        lines.append(f"| {card} | {config} | {cells[0]} | {cells[1]} |")
    lines.append(f"| target (fused, H100) | | <= {TARGET_FIRST_INFERENCE_S['cold']:g} | "
                 f"<= {TARGET_FIRST_INFERENCE_S['warm']:g} |")
    return lines


def block_table(rows: dict, card: str, dtype: str, batch: int, image_size: int, peaks: dict) -> list[str]:
    """Inception-v4's blocks (benchmarks/test_blocks.py) against their compute and memory floors."""
    mine = {k: r for k, r in rows.items() if k[:2] == (card, TARGET_MODEL) and k[3] == dtype and k[4] == batch
            and k[5] == image_size}
    if not mine:
        return []
    floors = {f["block"]: f for f in block_floors(image_size, batch, dtype, peaks)}
    impls = ["eager", "torch", "triton", "cuda"]
    lines = [
        f"**{card}**, {dtype}, batch {batch}: median ms per block instance; floors at "
        f"{peaks[dtype]:.0f} TFLOP/s and {peaks['copy_tbps']:.2f} TB/s.",
        "",
        "| block | " + " | ".join(impls) + " | compute floor | memory floor | best fused / floor |",
        "|---|" + "---|" * (len(impls) + 3),
    ]
    for block, floor in floors.items():
        by_impl = {r["impl"]: r for r in mine.values() if r["block"] == block}
        fused = [r["median_ms"] for i, r in by_impl.items() if i != "eager" and r.get("check") == "pass"]
        ratio = f"{min(fused) / max(floor['compute_ms'], floor['memory_ms']):.1f}x" if fused else "-"
        cells = [_cell(by_impl.get(i)) for i in impls]
        lines.append(f"| {block} | " + " | ".join(cells) +
                     f" | {floor['compute_ms']:.4f} | {floor['memory_ms']:.4f} | {ratio} |")
    return lines


def plot(rows: dict, card: str, model: str, dtype: str, image_size: int, path: Path) -> bool:
    if NO_PLOTS:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    mine = [r for k, r in rows.items() if k[:2] == (card, model) and k[3] == dtype and k[5] == image_size]
    if not mine:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name in sorted({r["name"] for r in mine}, key=_order):
        points = sorted((r["batch"], r["images_per_s"]) for r in mine if r["name"] == name)
        fused = name.startswith("fused")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if fused else "s",
                linestyle="-" if fused else "--", linewidth=2 if fused else 1.2, label=name)
    if model == TARGET_MODEL and dtype == "fp16" and image_size == 299:
        for batch, ms in TARGET_MS.items():
            ax.plot([batch], [batch / (ms / 1e3)], marker="*", color="black", markersize=11, linestyle="none",
                    label="target" if batch == 1 else None)
    ax.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in mine})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"{model} {image_size}x{image_size} {dtype} on {card}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def table_settings(rows: dict, model: str, dtype: str | None, image_size: int | None) -> list[tuple]:
    """The (dtype, input size) pairs to make a model's tables for: the ones asked for; else the
    model's own where measured, else every one measured."""
    spec = MODELS.get(model)
    measured = sorted({(k[3], k[5]) for k in rows if k[1] == model})
    chosen = [(d, i) for d, i in measured if d == (dtype or d) and i == (image_size or i)]
    if dtype is None and spec and any(d == spec.dtype for d, _ in chosen):
        chosen = [(d, i) for d, i in chosen if d == spec.dtype]
    if image_size is None and spec and any(i == spec.image_size for _, i in chosen):
        chosen = [(d, i) for d, i in chosen if i == spec.image_size]
    return chosen


def build_summary(documents: list[dict], out: Path, dtype: str | None, image_size: int | None,
                  block_batch: int, peaks_file: Path | None, image_dir: str = "") -> str:
    """The Markdown summary; images are linked as `image_dir` + file name."""
    model = newest_rows(documents, "model")
    floors = newest_rows(documents, "conv-floor")
    blocks = newest_rows(documents, "blocks")
    measured_peaks = json.loads(peaks_file.read_text()) if peaks_file and peaks_file.exists() else None
    cards = sorted({k[0] for k in model} | {k[0] for k in blocks})
    names = sorted({k[1] for k in model}, key=lambda m: (m != TARGET_MODEL, m))
    lines = []
    for name, card in [(name, card) for name in names for card in cards]:
        for table_dtype, size in table_settings(model, name, dtype, image_size):
            if not any(k[:2] == (card, name) and k[3] == table_dtype and k[5] == size for k in model):
                continue
            lines += [f"### Whole model: {name}", "", *model_table(model, card, name, table_dtype, size), ""]
            suffix = "" if name == TARGET_MODEL else f"-{slug(name)}"
            suffix += "" if (table_dtype, size) == (MODELS[name].dtype, MODELS[name].image_size) \
                else f"-{table_dtype}-{size}"
            png = out / f"images_per_s-{slug(card)}{suffix}.png"
            if plot(model, card, name, table_dtype, size, png):
                lines += [f"![images/s against batch size, {name} on {card}]({image_dir}{png.name})", ""]
            floor = floor_table(floors, card, name, table_dtype, size)
            if floor:
                lines += [*floor, ""]
    missing = unsupported(documents)
    if missing:
        lines += ["### Not supported by this version", ""]
        lines += [f"- {name} ({card}): {reason}" for (card, name), reason in sorted(missing.items())] + [""]
    ttfi = first_inference_table(documents)
    if ttfi:
        lines += ["### Time to first inference (fresh process)", "", *ttfi, ""]
    for card in cards:
        same_card = measured_peaks if measured_peaks and measured_peaks.get("card") == card else None
        for block_dtype, size in table_settings(blocks, TARGET_MODEL, dtype, image_size):
            table = block_table(blocks, card, block_dtype, block_batch, size, peaks_for(card, same_card))
            if table:
                lines += ["### Inception-v4's blocks against their floors", "", *table, ""]
    sources = ", ".join(Path(d["path"]).name for d in documents)
    lines.append(f"<sub>made by benchmarks/make_report.py from {sources}</sub>")
    return "\n".join(lines)


def replace_between_markers(readme: Path, text: str) -> None:
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def short_table(documents: list[dict]) -> str:
    """One line per model and batch: the best fused configuration, the anchor (the fastest
    anchor), their ratio and the cuDNN conv floor, from the newest rows on each card."""
    groups: dict = {}
    for key, row in newest_rows(documents, "model").items():
        card, model, _, dtype, batch, size = key
        groups.setdefault((card, model, dtype, batch, size), []).append(row)
    lines = ["| card | model | dtype | batch | best fused | ms | the anchor | ms | fused x anchor "
             "| convs alone ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (card, model, dtype, batch, _), here in sorted(groups.items()):
        fused = min((r for r in here if r["kind"] == "fused" and r.get("check") == "pass"),
                    key=lambda r: r["median_ms"], default=None)
        anchor = min((r for r in here if r["kind"] == "anchor"), key=lambda r: r["median_ms"], default=None)
        floor = next((r for r in here if r["kind"] == "floor"), None)
        cells = [card, model, dtype, str(batch)]
        cells += [fused["name"], f"{fused['median_ms']:.3f}"] if fused else ["-", "-"]
        cells += [anchor["name"], f"{anchor['median_ms']:.3f}"] if anchor else ["-", "-"]
        cells.append(f"{anchor['median_ms'] / fused['median_ms']:.2f}" if fused and anchor else "-")
        cells.append(f"{floor['median_ms']:.3f}" if floor else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for (card, model), reason in sorted(unsupported(documents).items()):
        lines.append(f"| {card} | {model} | | | {reason} | | | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, help="where summary.md and the PNGs go (default: results dir)")
    parser.add_argument("--readme", type=Path, help="replace the marked results section of this file")
    parser.add_argument("--dtype", help="dtype of the tables (default: each model's own, e.g. fp16)")
    parser.add_argument("--image-size", type=int, help="input size of the tables (default: each model's own)")
    parser.add_argument("--block-batch", type=int, default=256, help="batch of the blocks-vs-floors table")
    parser.add_argument("--peaks", type=Path, help="peaks JSON from floors.py --measure "
                        "(default: <results-dir>/peaks.json)")
    parser.add_argument("--no-plot", action="store_true", help="no PNG (only summary.md is written)")
    parser.add_argument("--short", action="store_true",
                        help="print only one line per model and batch (best fused, the anchor, the floor)")
    args = parser.parse_args(argv)
    global NO_PLOTS
    NO_PLOTS = args.no_plot
    out = args.out or args.results_dir
    documents = load(list(args.results_dir.glob("*.json")))
    if not documents:
        print(f"no results in {args.results_dir}", file=sys.stderr)
        return 1
    summary = build_summary(documents, out, args.dtype, args.image_size, args.block_batch,
                            args.peaks or args.results_dir / "peaks.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary + "\n")
    print(short_table(documents) if args.short else summary)
    if args.readme:  # the same summary, its images linked from where the README lies
        image_dir = os.path.relpath(out.resolve(), args.readme.resolve().parent) + "/"
        replace_between_markers(args.readme, build_summary(
            documents, out, args.dtype, args.image_size, args.block_batch,
            args.peaks or args.results_dir / "peaks.json", image_dir,
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
