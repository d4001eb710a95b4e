"""Time to first inference: from `python` starting to the first logits, in a fresh process.

What a user waits for: interpreter start, imports, building the model, CUDA context, JIT
compilation and autotuning (Triton kernels, the CUDA extension, Inductor), one forward pass.
Measured in child processes so nothing is already imported, compiled or cached in memory:

- cold: every cache directory (TRITON_CACHE_DIR, INCEPTION_FAST_CACHE_DIR,
  TORCHINDUCTOR_CACHE_DIR, TORCH_EXTENSIONS_DIR) points into a new, empty temporary directory;
- warm: a second fresh process on the same directories.

Python's bytecode (`__pycache__`) belongs to the installation, not to these caches: `pip install`
writes it. Where the installed packages have none (a read-only or stripped environment), every
process would compile their sources again (seconds for torch alone), so the runs share a
bytecode directory (PYTHONPYCACHEPREFIX) that an untimed priming run, on caches of its own,
fills first. Each result says which ("bytecode": "installed" or "primed").

The parent notes the wall clock just before starting the child; the child prints the wall clock
when its first logits are on the host. The difference is the time to first inference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

CACHE_VARIABLES = (
    "TRITON_CACHE_DIR", "INCEPTION_FAST_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
)
RESULT_PREFIX = "FIRST_INFERENCE_RESULT "


def child_main(config: str, backend: str, device: str, dtype: str, batch: int, image_size: int) -> int:
    """Run in the fresh process (`python -m inception_fast _first-inference ...`). Reports the
    wall clock at each step; `import torch` has already happened (the package imports it)."""
    marks = {"imported": time.time()}
    import torch

    from .bench import DTYPES, anchor_model
    from .optimize import optimize
    from .reference import inception_v4

    torch_dtype = DTYPES[dtype][0]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = DTYPES[dtype][1]
    # Random weights: loading a checkpoint costs the same for every configuration and is not
    # what this measures. No BN calibration either: the values do not change the time.
    reference = inception_v4()
    dev = torch.device(device)
    # Made where it is used: a user's images exist already, and drawing 2048 of them on the host
    # takes seconds that are not the model's.
    x = torch.randn(batch, 3, image_size, image_size, device=dev, dtype=torch_dtype)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    marks["model_built"] = time.time()
    with torch.inference_mode():
        if config == "fused":
            model = optimize(reference, backend=backend, dtype=torch_dtype, device=dev)
        elif config.startswith("compile"):
            mode = config.partition(":")[2] or "default"
            anchor, _ = anchor_model(reference, torch_dtype, dev)
            model = torch.compile(anchor, mode=mode, dynamic=False)
        elif config == "eager":
            model, _ = anchor_model(reference, torch_dtype, dev)
        else:
            raise SystemExit(f"unknown configuration {config!r}")
        marks["prepared"] = time.time()
        logits = model(x).float().cpu()  # .cpu() waits for the device
    marks["first_logits"] = time.time()
    if not torch.isfinite(logits).all():
        print("warning: non-finite logits (random weights without BN calibration)", file=sys.stderr)
    print(RESULT_PREFIX + json.dumps(marks), flush=True)
    return 0


def bytecode_is_installed() -> bool:
    """Whether the installed torch came with its bytecode (what every import would else compile)."""
    import importlib.util

    import torch

    return os.path.exists(importlib.util.cache_from_source(torch.__file__))


def cache_env(cache_root) -> dict:
    """This process's environment with every cache variable pointing into `cache_root` (one
    directory each, made here), for a fresh process that finds only what is cached there."""
    env = dict(os.environ)
    for name in CACHE_VARIABLES:
        path = os.path.join(cache_root, name.lower())
        os.makedirs(path, exist_ok=True)
        env[name] = path
    return env


def measure(
    config: str, *, cache_root: str, backend: str = "auto", device: str = "cuda", dtype: str = "fp16",
    batch: int = 1, image_size: int = 299, timeout_s: float = 900.0, bytecode_dir: str | None = None,
) -> dict:
    """One fresh process with its caches under `cache_root` (and Python's bytecode under
    `bytecode_dir` when given); returns seconds and a breakdown."""
    env = cache_env(cache_root)
    if bytecode_dir is not None:
        env["PYTHONPYCACHEPREFIX"] = bytecode_dir
    command = [
        sys.executable, "-m", "inception_fast", "_first-inference", "--config", config,
        "--backend", backend, "--device", device, "--dtype", dtype, "--batch", str(batch),
        "--image-size", str(image_size),
    ]
    start_wall = time.time()
    try:
        proc = subprocess.run(
            command, check=False, env=env, capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"config": config, "error": f"did not finish in {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            marks = json.loads(line[len(RESULT_PREFIX):])
            since_start = {name: wall - start_wall for name, wall in marks.items()}
            return {"config": config, "seconds": since_start["first_logits"], "steps_s": since_start}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"config": config, "error": f"exit code {proc.returncode}: {' | '.join(tail)}"}


def primed_bytecode(root: str, prime: Callable[[str, str], object]) -> str | None:
    """None where the installed packages carry their bytecode (as `pip install` writes it); else
    a bytecode directory under `root` for every measured run to share, filled first by
    `prime(cache_root, bytecode_dir)`: one untimed run on caches of its own (under `root` too)."""
    if bytecode_is_installed():
        return None
    bytecode_dir = os.path.join(root, "bytecode")
    prime(os.path.join(root, "priming"), bytecode_dir)
    return bytecode_dir


def cold_and_warm(config: str, **kwargs) -> list[dict]:
    """The same configuration twice: first on empty caches, then on the caches it filled (after
    an untimed priming run for the bytecode where the installation has none)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="inception-fast-ttfi-") as root:
        bytecode_dir = primed_bytecode(
            root, lambda caches, primed: measure(config, cache_root=caches, bytecode_dir=primed, **kwargs))
        bytecode = "installed" if bytecode_dir is None else "primed"
        if bytecode_dir is not None:
            kwargs["bytecode_dir"] = bytecode_dir
        for cache in ("cold", "warm"):
            result = measure(config, cache_root=os.path.join(root, "caches"), **kwargs)
            results.append({"cache": cache, "bytecode": bytecode, **result})
    return results
