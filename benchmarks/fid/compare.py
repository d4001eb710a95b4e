"""End to end: JPEG folders to an FID value, pytorch-fid's command against `inception-fast fid`.

    python benchmarks/fid/compare.py --out OUT [--data DIR] [--count 25000] [--gpus 1,2]

Folder A holds COUNT 256x256 JPEGs, folder B COUNT 512x512 ones (pytorch-fid needs one size
per folder), written once by make_images.py. Every configuration runs as a user runs it, in a
fresh process (`python -m pytorch_fid ...`, `python -m inception_fast fid ...`, `torchrun
--nproc-per-node N -m inception_fast fid ...`), with the files in the page cache, and is timed
from launch to exit: interpreter start, imports, the model, decoding, the network, the
statistics and the distance are all in the time. pytorch-fid runs with its defaults (batch 50,
min(8, CPUs) workers) and with batch 256 and 16 workers.

Without --weights, a random-weight checkpoint in pytorch-fid's format (BatchNorm calibrated on
images of folder A) is written and put where pytorch-fid's download would be (TORCH_HOME), so
both tools use the same weights offline. The FID values of such a network are not comparable
with published ones; the timings and the agreement between the tools are.

Writes OUT/fid-compare.json and OUT/fid-compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_images import make_images  # noqa: E402

from inception_fast.fid.checkpoint import CHECKPOINT_FILENAME  # noqa: E402

FID_LINE = re.compile(r"^FID:\s+(\S+)\s*$", re.M)
SECONDS_LINE = re.compile(r"seconds: (.*)$", re.M)


def _environment() -> dict:
    import torchvision

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    commit = os.environ.get("INCEPTION_FAST_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                    check=False).stdout.strip() or "unknown"
        except OSError:
            commit = "unknown"
    try:
        import pytorch_fid

        pytorch_fid_version = getattr(pytorch_fid, "__version__", "installed")
    except ImportError:
        pytorch_fid_version = None
    return {"gpus": gpus, "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "pytorch_fid": pytorch_fid_version,
            "commit": commit, "python": sys.version.split()[0]}


def _checkpoint(args, data: Path, folder_a: Path) -> Path:
    if args.weights:
        return Path(args.weights)
    from inception_fast.fid.images import decode_rgb, list_image_files
    from inception_fast.fid.testing import write_random_checkpoint

    path = data / "weights" / f"random-{CHECKPOINT_FILENAME}"
    if not path.exists():
        files = list_image_files(folder_a)[:128]
        pixels = torch.stack([torch.from_numpy(decode_rgb(f).copy()).permute(2, 0, 1) for f in files])
        images = pixels.float() / 255
        device = "cuda" if torch.cuda.is_available() else "cpu"
        write_random_checkpoint(path, seed=0, calibration_images=images.to(device))
    return path


def _torch_home(data: Path, checkpoint: Path) -> Path:
    """A TORCH_HOME where pytorch-fid finds `checkpoint` as its own download."""
    home = data / "torch_home"
    cached = home / "hub" / "checkpoints" / CHECKPOINT_FILENAME
    cached.parent.mkdir(parents=True, exist_ok=True)
    if cached.is_symlink() or cached.exists():
        cached.unlink()
    cached.symlink_to(checkpoint.resolve())
    return home


def _warm_page_cache(folders: list[Path]) -> float:
    start = time.perf_counter()
    for folder in folders:
        for path in folder.iterdir():
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
    return time.perf_counter() - start


def _text(stream) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def _run(name: str, command: list[str], env: dict, timeout: float, cpus: int | None) -> dict:
    affinity = sorted(os.sched_getaffinity(0))[:cpus] if cpus else None
    print(f"--- {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                              preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
        wall, rc, out, err = time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as expired:
        wall, rc = time.perf_counter() - start, 124
        out, err = (_text(expired.stdout), _text(expired.stderr))
    match = FID_LINE.search(out)
    seconds = SECONDS_LINE.search(err)
    used = len(affinity) if affinity else len(os.sched_getaffinity(0))
    result = {"name": name, "command": command, "cpus": used,
              "wall_s": round(wall, 3), "returncode": rc, "fid": float(match.group(1)) if match else None,
              "steps": seconds.group(1) if seconds else None, "stderr_tail": err[-1500:]}
    steps = f", {result['steps']}" if seconds else ""
    print(f"    {wall:.2f} s, rc {rc}, FID {result['fid']}{steps}", flush=True)
    if rc != 0:
        print(err[-1500:], flush=True)
    return result


def _configurations(args, folders, checkpoint) -> list[tuple[str, list[str], int]]:
    """(name, command, GPUs)."""
    a, b = map(str, folders)
    python = sys.executable
    ours = ["-m", "inception_fast", "fid", a, b, "--weights", str(checkpoint),
            "--batch-size", str(args.batch_size), "--no-progress", "--timings", "--device", args.device]
    configs = []
    if not args.skip_pytorch_fid:
        configs += [
            ("pytorch-fid (batch 50, default workers)",
             [python, "-m", "pytorch_fid", a, b, "--device", args.device], 1),
            ("pytorch-fid (batch 256, 16 workers)",
             [python, "-m", "pytorch_fid", a, b, "--device", args.device, "--batch-size", "256",
              "--num-workers", "16"], 1),
        ]
    variants = [
        ("inception-fast fp32", []),
        ("inception-fast fp32, eigh", ["--fid-method", "eigh"]),
        ("inception-fast fp32, GPU decode", ["--gpu-decode"]),
        ("inception-fast fp32, GPU decode, eigh", ["--gpu-decode", "--fid-method", "eigh"]),
        ("inception-fast fp16, GPU decode, eigh",
         ["--gpu-decode", "--fid-method", "eigh", "--precision", "fp16"]),
        ("inception-fast eager fp32 (unfused)", ["--backend", "eager"]),
    ]
    for gpus in args.gpus:
        for name, extra in variants:
            if gpus == 1:
                configs.append((name, [python, *ours, *extra], 1))
            elif "eager" not in name:
                # torchrun -m inception_fast fid ...: the package runs as a module on every rank.
                torchrun = [python, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", str(gpus)]
                configs.append((f"{name}, torchrun {gpus} GPUs", [*torchrun, *ours, *extra], gpus))
    return configs


def _warm_up(args, data: Path, checkpoint: Path, env: dict) -> list[dict]:
    """One untimed-for-the-table run per precision on 512 + 512 images first: the first process
    tunes kernels and fills the compile caches, which every later process (and user) reuses.
    Recorded apart, as the cost of a first run on a new machine."""
    small = [data / "warm-a-512-256", data / "warm-b-512-512"]
    make_images(small[0], 512, 256, seed=10)
    make_images(small[1], 512, 512, seed=11)
    runs = []
    for precision in ("fp32", "fp16"):
        command = [sys.executable, "-m", "inception_fast", "fid", *map(str, small),
                   "--weights", str(checkpoint), "--batch-size", str(args.batch_size), "--no-progress",
                   "--timings", "--device", args.device, "--precision", precision, "--fid-method", "eigh"]
        name = f"warm-up {precision} (first run: tuning, compiling)"
        runs.append(_run(name, command, env, args.timeout, None))
    return runs


def _summary(document: dict) -> str:
    runs = document["runs"]
    ok = [r for r in runs if r["returncode"] == 0]
    baseline = next((r for r in ok if r["name"].startswith("pytorch-fid (batch 50")), None)
    reference = next((r for r in ok if r["name"] == "inception-fast fp32"), None)
    env = document["environment"]
    data = document["data"]
    lines = [f"# FID end to end: {data['a']['files']} + {data['b']['files']} JPEGs", "",
             f"{', '.join(env['gpus']) or 'no GPU'}, {env['cpus']} CPUs, torch {env['torch']}, "
             f"commit {env['commit'][:12]}", "",
             "| configuration | GPUs | CPUs | wall s | x pytorch-fid | FID | rel. diff to pytorch-fid "
             "| steps (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        speedup = f"{baseline['wall_s'] / r['wall_s']:.2f}" if baseline and r["returncode"] == 0 else ""
        diff = (f"{abs(r['fid'] - baseline['fid']) / abs(baseline['fid']):.1e}"
                if baseline and r["fid"] is not None else "")
        status = f"{r['wall_s']:.2f}" if r["returncode"] == 0 else f"failed (rc {r['returncode']})"
        lines.append(f"| {r['name']} | {r['gpus']} | {r['cpus']} | {status} | {speedup} | {r['fid']} | "
                     f"{diff} | {r['steps'] or ''} |")
    if reference:
        lines += ["", f"inception-fast fp32 on 1 GPU: {reference['wall_s']:.2f} s."]
    for r in document.get("warm_up", []):
        ok = r["returncode"] == 0
        outcome = f"{r['wall_s']:.2f} s ({r['steps']})" if ok else f"failed (rc {r['returncode']})"
        lines += ["", f"Before the table, on 512 + 512 images: {r['name']}: {outcome}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "fid_out"))
    parser.add_argument("--data", default="/tmp/inception_fast_fid_data",
                        help="where the JPEGs are made (once)")
    parser.add_argument("--count", type=int, default=25000, help="images per folder (A: 256x256, B: 512x512)")
    parser.add_argument("--weights", help="pytorch-fid's checkpoint (default: a random one, see above)")
    parser.add_argument("--gpus", default="1", help="comma-separated GPU counts to run inception-fast on")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus-per-gpu", type=int, help="restrict each run to this many CPUs per GPU")
    parser.add_argument("--skip-pytorch-fid", action="store_true")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="no untimed first runs (the first configuration then pays for compiling)")
    parser.add_argument("--only", help="run only the configurations whose name contains this text")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script without a GPU")
    args = parser.parse_args()
    args.gpus = [int(g) for g in args.gpus.split(",")]
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)

    folders = [data / f"a-{args.count}-256", data / f"b-{args.count}-512"]
    made = {side: make_images(folder, args.count, size, seed=seed)
            for side, folder, size, seed in (("a", folders[0], 256, 0), ("b", folders[1], 512, 1))}
    print(f"images: {json.dumps(made)}", flush=True)
    checkpoint = _checkpoint(args, data, folders[0])
    env = dict(os.environ, TORCH_HOME=str(_torch_home(data, checkpoint)),
               PYTHONWARNINGS="ignore::DeprecationWarning")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    warm = _warm_page_cache(folders)
    print(f"page cache warmed in {warm:.1f} s", flush=True)

    document = {"schema": "inception_fast.fid.compare/1", "environment": _environment(),
                "data": {"a": {"folder": str(folders[0]), "size": 256, **made["a"]},
                         "b": {"folder": str(folders[1]), "size": 512, **made["b"]}},
                "weights": "given" if args.weights else "random (BatchNorm calibrated), pytorch-fid's format",
                "batch_size": args.batch_size, "runs": []}
    document["warm_up"] = [] if args.no_warm_up else _warm_up(args, data, checkpoint, env)
    for name, command, gpus in _configurations(args, folders, checkpoint):
        if args.only and args.only not in name:
            continue
        if args.device == "cuda" and gpus > torch.cuda.device_count():
            print(f"--- {name}: skipped, needs {gpus} GPUs", flush=True)
            continue
        cpus = args.cpus_per_gpu * gpus if args.cpus_per_gpu else None
        document["runs"].append({**_run(name, command, env, args.timeout, cpus), "gpus": gpus})
        (out / "fid-compare.json").write_text(json.dumps(document, indent=1))
    summary = _summary(document)
    (out / "fid-compare.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
