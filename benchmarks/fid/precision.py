"""How far fp16 and bf16 move FID from fp32, on real photographs.

    python benchmarks/fid/precision.py --out OUT --photos scikit_image-*.whl [--count 2500]

Three sets of crops of scikit-image's sample photographs (photos.py): A and A2 from the same
photos (FID small), B from the others (FID large). Features are computed in every precision;
the reference is fp32 with TF32 off. Reported per precision and backend: FID(A, B) and
FID(A, A2), their difference to the reference (absolute and relative), and the relative L2
distance of the features to the reference features.

FIDs are computed with method="eigh" (the same value as scipy's sqrtm to ~1e-12 on these
full-rank covariances, and seconds faster per pair).

Without --weights the network has random weights with BatchNorm calibrated on the photos (so
every layer's activations are normalised, as in a trained network); pass pytorch-fid's
checkpoint where it is at hand, the numbers that matter are with its weights.

Writes OUT/fid-precision.json and OUT/fid-precision.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from photos import load_photos, photo_sets, photo_weights  # noqa: E402

from inception_fast.fid import build_feature_model, calculate_frechet_distance, compute_features  # noqa: E402
from inception_fast.fid.statistics import feature_statistics  # noqa: E402


def _relative_l2(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def _features(sets, weights, precision: str, backend: str, tf32: bool, batch_size: int,
              device: str) -> tuple[dict, float]:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        model = build_feature_model(weights, dims=2048, device=device, precision=precision, backend=backend)
        compute_features(sets["A"][:batch_size], model=model, batch_size=batch_size)  # warm-up, tuning
        start = time.perf_counter()
        features = {name: compute_features(images, model=model, batch_size=batch_size)
                    for name, images in sets.items()}
        return features, time.perf_counter() - start
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "fid_out"))
    parser.add_argument("--photos",
                        help="scikit-image's wheel file, or a folder of photos (default: the installed "
                             "scikit-image)")
    parser.add_argument("--weights",
                        help="pytorch-fid's checkpoint (default: random, calibrated on the photos)")
    parser.add_argument("--count", type=int, default=2500,
                        help="crops per set (> 2048 for full-rank covariances)")
    parser.add_argument("--backends", default="auto,eager")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script without a GPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    photos, source = load_photos(args.photos)
    sets = photo_sets(photos, args.count)
    weights = photo_weights(args.weights, out, sets, args.device)

    reference, seconds = _features(sets, weights, "fp32", "eager", False, args.batch_size, args.device)
    pairs = (("A", "B"), ("A", "A2"))
    ref_stats = {name: feature_statistics(f) for name, f in reference.items()}
    ref_fid = {pair: calculate_frechet_distance(*ref_stats[pair[0]], *ref_stats[pair[1]], method="eigh")
               for pair in pairs}
    rows = [{"precision": "fp32, TF32 off", "backend": "eager", "seconds": seconds, "feature_rel_l2": 0.0,
             **{f"fid_{a}_{b}": ref_fid[(a, b)] for a, b in pairs}}]
    for backend in args.backends.split(","):
        for precision, tf32 in (("fp32", False), ("fp32", True), ("fp16", True), ("bf16", True)):
            if backend == "eager" and precision == "fp32" and not tf32:
                continue  # the reference itself
            name = precision if precision != "fp32" else ("fp32, TF32 convs" if tf32 else "fp32, TF32 off")
            try:
                features, seconds = _features(sets, weights, precision, backend, tf32, args.batch_size,
                                              args.device)
            except (TypeError, RuntimeError) as err:
                rows.append({"precision": name, "backend": backend, "error": str(err)[:300]})
                continue
            stats = {n: feature_statistics(f) for n, f in features.items()}
            row = {"precision": name, "backend": backend, "seconds": seconds,
                   "feature_rel_l2": max(_relative_l2(features[n], reference[n]) for n in features)}
            for a, b in pairs:
                value = calculate_frechet_distance(*stats[a], *stats[b], method="eigh")
                row[f"fid_{a}_{b}"] = value
                row[f"fid_{a}_{b}_abs_diff"] = value - ref_fid[(a, b)]
                row[f"fid_{a}_{b}_rel_diff"] = (value - ref_fid[(a, b)]) / ref_fid[(a, b)]
            rows.append(row)
            print(json.dumps(row), flush=True)

    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    document = {"schema": "inception_fast.fid.precision/1", "gpu": card,
                "torch": torch.__version__, "photos": source, "photo_names": sorted(photos),
                "crops_per_set": args.count, "rows": rows,
                "weights": "given" if args.weights else "random, BatchNorm calibrated"}
    (out / "fid-precision.json").write_text(json.dumps(document, indent=1))
    lines = [f"# FID in low precision: {args.count} crops per set of {len(photos)} photographs ({source})",
             "", f"{document['gpu']}, torch {document['torch']}, weights: {document['weights']}. "
             "Reference: fp32, TF32 off, eager.", "",
             "| precision | backend | FID(A,B) | rel. diff | FID(A,A2) | rel. diff | features rel. L2 | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | {r['backend']} | failed: {r['error'][:80]} | | | | | |")
            continue
        cells = [f"{r['fid_A_B']:.6f}", f"{r.get('fid_A_B_rel_diff', 0):+.2e}", f"{r['fid_A_A2']:.6f}",
                 f"{r.get('fid_A_A2_rel_diff', 0):+.2e}", f"{r['feature_rel_l2']:.2e}", f"{r['seconds']:.2f}"]
        lines.append(f"| {r['precision']} | {r['backend']} | " + " | ".join(cells) + " |")
    (out / "fid-precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
