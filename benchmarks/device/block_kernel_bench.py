"""The persistent block kernel (`triton-block`: one launch per block) against the per-stage
Triton kernels (`triton`: one launch per stage), Inception-v4 in fp16 on one GPU, in about
4 minutes:

1. correctness: every distinct block at batch 8 on `triton-block` (the 2x rule against the
   fp32 torch backend, with the fp16 torch backend as "eager"; NaN-poisoned buffers; 5
   launches bit for bit equal), then the whole model with backend="triton-block" and "auto"
   at batch 1 and 8 (the 2x rule at the logits against eager fp16);
2. the whole model captured in a CUDA graph at batch 1 and 8: triton, triton-block, auto
   (auto's first call of a shape, in step 1, times its candidates per block, the CUDA
   extension among them: build the extension first, or that call takes a minute more);
3. per block, CUDA-graph replay, median ms at batch 1, 8 and 32: triton (its shipped or
   heuristic tiles), triton-block with its heuristic config, and the best of a few
   triton-block configs (batches 1 and 8, while time allows).

A block or configuration that fails is reported and the run goes on; a watchdog writes what
was measured and exits if the run hangs (a deadlocked kernel) or runs past its deadline.

    python benchmarks/device/block_kernel_bench.py OUT_DIR

Prints tables; writes OUT_DIR/block_kernel_bench.json.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from inception_fast import optimize, timing
from inception_fast.backends import triton_block_backend as tb
from inception_fast.kernels.triton import tuning
from inception_fast.testing import calibrated_inception_v4, relative_l2

DTYPE = torch.float16
BATCHES = (1, 8, 32)
MODEL_BATCHES = (1, 8)
SWEEP_BATCHES = (1, 8)
SOFT_DEADLINE_S = 180  # the optional part (the config sweep) stops here
HARD_DEADLINE_S = 290  # the watchdog writes the JSON and exits
START = time.perf_counter()
RESULTS: dict = {"correctness": [], "model_correctness": [], "blocks": [], "sweep": [], "model": [],
                 "errors": []}
_out_path: Path | None = None


def elapsed() -> float:
    return time.perf_counter() - START


def log(*args) -> None:
    print(f"[{elapsed():6.1f} s]", *args, flush=True)


def write_json() -> None:
    if _out_path is not None:
        RESULTS["elapsed_s"] = round(elapsed(), 1)
        _out_path.write_text(json.dumps(RESULTS, indent=1))


def watchdog() -> None:
    log(f"WATCHDOG: still running after {HARD_DEADLINE_S} s (a hang?); writing what was measured")
    RESULTS["aborted"] = f"watchdog after {HARD_DEADLINE_S} s"
    write_json()
    os._exit(3)


def failed(where: str, err: BaseException) -> None:
    message = f"{type(err).__name__}: {err}"
    log(f"FAILED {where}: {message}")
    RESULTS["errors"].append({"where": where, "error": message, "trace": traceback.format_exc()[-2000:]})


@contextlib.contextmanager
def poisoned(on: bool):
    """INCEPTION_FAST_POISON=1 (the GPU backends fill new buffers with NaN) inside, or not."""
    saved = os.environ.pop("INCEPTION_FAST_POISON", None)
    if on:
        os.environ["INCEPTION_FAST_POISON"] = "1"
    try:
        yield
    finally:
        os.environ.pop("INCEPTION_FAST_POISON", None)
        if saved is not None:
            os.environ["INCEPTION_FAST_POISON"] = saved


def distinct_blocks(fused32):
    """(step index, block) of the first block of each plan, in network order."""
    seen, found = set(), []
    for index, step in enumerate(fused32.steps):
        plan = getattr(step, "plan", None)
        if plan is not None and plan not in seen:
            seen.add(plan)
            found.append((index, step))
    return found


@torch.no_grad()
def block_inputs(fused32, batch: int) -> dict:
    """The fp32 activation entering each step, from random images through the fp32 network."""
    x = torch.randn(batch, 3, 299, 299, device="cuda").contiguous(memory_format=torch.channels_last)
    inputs = {}
    for index, step in enumerate(fused32.steps):
        inputs[index] = x
        x = step.run(x) if hasattr(step, "plan") else step(x)
    return inputs


def module_on(block, backend: str):
    module = copy.deepcopy(block).to(DTYPE)
    module.backend = backend
    return module


def graph_ms(fn, x: torch.Tensor, budget_ms: float = 150.0) -> float:
    graph = timing.CapturedGraph(fn, x)
    return timing.time_graph(graph, [x], budget_ms=budget_ms).median_ms


@torch.no_grad()
def check_blocks(fused32, blocks) -> None:
    inputs = block_inputs(fused32, 8)
    for index, block in blocks:
        name = block.plan.label
        try:
            x = inputs[index]
            ref = block.run(x)
            eager = module_on(block, "torch")(x.to(DTYPE))
            kernel = module_on(block, "triton-block")
            out = kernel(x.to(DTYPE))
            repeats_equal = all(torch.equal(kernel(x.to(DTYPE)), out) for _ in range(5))
            err, eager_err = relative_l2(out, ref), relative_l2(eager, ref)
            ok = bool(torch.isfinite(out).all()) and err <= 2 * eager_err + 1e-3 and repeats_equal
            row = {"block": name, "step": index, "error": err, "torch_fp16_error": eager_err,
                   "repeats_equal": repeats_equal, "ok": ok}
            log(f"check {name:<26} err {err:.2e} (torch fp16 {eager_err:.2e}) repeats equal "
                f"{repeats_equal}: {'ok' if ok else 'FAIL'}")
            RESULTS["correctness"].append(row)
        except Exception as err:  # noqa: BLE001 - reported, the run goes on
            failed(f"check {name}", err)


@torch.no_grad()
def check_models(model32) -> None:
    fused = {}
    for backend in ("triton-block", "auto"):
        try:
            fused[backend] = optimize(model32, backend=backend, dtype=DTYPE, cuda_graph=False)
        except Exception as err:  # noqa: BLE001
            failed(f"optimize({backend})", err)
    eager = copy.deepcopy(model32).to(DTYPE).to(memory_format=torch.channels_last)
    for batch in MODEL_BATCHES:
        x = torch.randn(batch, 3, 299, 299, device="cuda")
        ref = model32(x)
        eager_err = relative_l2(eager(x.to(DTYPE)), ref)
        for backend, model in fused.items():
            try:
                start = time.perf_counter()
                with poisoned(False):  # auto times its candidates now: without the NaN fills
                    model(x.to(DTYPE))
                first_s = time.perf_counter() - start
                out = model(x.to(DTYPE))
                err = relative_l2(out, ref)
                ok = err <= 2 * eager_err + 1e-3
                log(f"model {backend:<12} batch {batch}: err {err:.2e} (eager fp16 {eager_err:.2e}) "
                    f"{'ok' if ok else 'FAIL'}; first call {first_s:.1f} s")
                RESULTS["model_correctness"].append({"backend": backend, "batch": batch, "error": err,
                                                     "eager_error": eager_err, "ok": ok,
                                                     "first_call_s": round(first_s, 2)})
            except Exception as err:  # noqa: BLE001
                failed(f"model {backend} batch {batch}", err)


def sweep_configs(block) -> list[tuple]:
    """A few configs around the heuristic: 64x64 tiles unsplit and split 2 and 4 ways, 64x128,
    128x128; BLOCK_K as the tuning picks it for the narrowest conv."""
    block_k = tuning.candidates(min((op.in_channels for op in block.plan.convs), default=64), 1)[0][2]
    return [(64, 64, block_k, 4, 4, 1), (64, 64, block_k, 4, 4, 2), (64, 64, block_k, 4, 4, 4),
            (64, 128, block_k, 4, 3, 1), (128, 128, block_k, 8, 3, 1)]


@torch.no_grad()
def time_blocks(fused32, blocks) -> None:
    for batch in BATCHES:
        inputs = block_inputs(fused32, batch)
        for index, block in blocks:
            name = block.plan.label
            x = inputs[index].to(DTYPE)
            row = {"block": name, "step": index, "batch": batch}
            for backend in ("triton", "triton-block"):
                try:
                    row[backend] = graph_ms(module_on(block, backend), x)
                except Exception as err:  # noqa: BLE001
                    failed(f"time {name} {backend} batch {batch}", err)
            if batch in SWEEP_BATCHES and elapsed() < SOFT_DEADLINE_S:
                module = module_on(block, "triton-block")
                best = None
                for config in sweep_configs(block):
                    try:
                        module(x)
                        tb._packed(module, x).state.configs[
                            (x.shape[0], x.shape[2], x.shape[3], x.dtype, False)] = config
                        ms = graph_ms(module, x, budget_ms=100.0)
                        RESULTS["sweep"].append({"block": name, "batch": batch, "config": config, "ms": ms})
                        if best is None or ms < best[1]:
                            best = (config, ms)
                    except Exception as err:  # noqa: BLE001
                        failed(f"sweep {name} batch {batch} {config}", err)
                if best is not None:
                    row["triton-block best"], row["best config"] = best[1], best[0]
            RESULTS["blocks"].append(row)
            best_ms = row.get("triton-block best")
            log(f"time {name:<26} b{batch:<3} triton {row.get('triton', float('nan')):.4f}  "
                f"triton-block {row.get('triton-block', float('nan')):.4f}  "
                + (f"best {best_ms:.4f} {row['best config']}" if best_ms is not None else ""))


@torch.no_grad()
def time_models(model32) -> None:
    models = {}
    for backend in ("triton", "triton-block", "auto"):
        try:
            models[backend] = optimize(model32, backend=backend, dtype=DTYPE, cuda_graph=False)
        except Exception as err:  # noqa: BLE001
            failed(f"optimize({backend})", err)
    for batch in MODEL_BATCHES:
        x = torch.randn(batch, 3, 299, 299, device="cuda", dtype=DTYPE)
        x = x.contiguous(memory_format=torch.channels_last)
        row = {"batch": batch}
        for backend, model in models.items():
            try:
                row[backend] = graph_ms(model, x, budget_ms=500.0)
            except Exception as err:  # noqa: BLE001
                failed(f"model time {backend} batch {batch}", err)
        log(f"model b{batch}: " + "  ".join(f"{k} {v:.4f} ms" for k, v in row.items() if k != "batch"))
        RESULTS["model"].append(row)


def _cell(value) -> str:
    return f"{value:10.4f}" if value is not None else f"{'-':>10}"


def print_tables() -> None:
    card = RESULTS.get("card", "?")
    print(f"\n{card}, Inception-v4, fp16, CUDA-graph replay, median ms per block")
    print(f"{'block':<28}{'batch':>6}{'triton':>10}{'t-block':>10}{'best':>10}{'speedup':>9}  best config")
    for r in RESULTS["blocks"]:
        t, b, best = r.get("triton"), r.get("triton-block"), r.get("triton-block best")
        ours = [v for v in (b, best) if v is not None]
        speed = f"{t / min(ours):8.2f}x" if t and ours else f"{'-':>9}"
        print(f"{r['block']:<28}{r['batch']:>6}{_cell(t)}{_cell(b)}{_cell(best)}{speed}  "
              f"{r.get('best config', '')}")
    print(f"\n{card}, Inception-v4, fp16, whole model under a CUDA graph, median ms")
    for r in RESULTS["model"]:
        print(f"batch {r['batch']:>3}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "batch"))
    checks = RESULTS["correctness"] + RESULTS["model_correctness"]
    bad = [r for r in checks if not r["ok"]]
    print(f"\ncorrectness: {len(RESULTS['correctness'])} blocks and {len(RESULTS['model_correctness'])} "
          f"model runs checked, {len(bad)} failed; {len(RESULTS['errors'])} errors")
    for e in RESULTS["errors"]:
        print(f"  ERROR {e['where']}: {e['error']}")


def main() -> int:
    global _out_path
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "block_kernel_bench_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    _out_path = out_dir / "block_kernel_bench.json"
    timer = threading.Timer(HARD_DEADLINE_S, watchdog)
    timer.daemon = True
    timer.start()
    import triton

    RESULTS.update(card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                   sms=torch.cuda.get_device_properties(0).multi_processor_count,
                   commit=os.environ.get("INCEPTION_FAST_COMMIT", "unknown"), dtype="fp16")
    log(f"{RESULTS['card']}, torch {torch.__version__}, triton {triton.__version__}")
    # The fp32 references (and the activations entering each block) in full fp32, not TF32.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model32 = calibrated_inception_v4(0).cuda()
    fused32 = optimize(model32, backend="torch", cuda_graph=False)
    blocks = distinct_blocks(fused32)
    steps = (  # poison: the backends fill their buffers with NaN first (correctness only: it costs time)
        ("block correctness", True, lambda: check_blocks(fused32, blocks)),
        ("model correctness", True, lambda: check_models(model32)),
        ("model timing", False, lambda: time_models(model32)),
        ("block timing", False, lambda: time_blocks(fused32, blocks)),
    )
    wanted = os.environ.get("BLOCK_BENCH_STEPS")  # e.g. "block correctness,model timing"
    for name, poison, fn in steps:
        if wanted and name not in wanted.split(","):
            continue
        log(f"=== {name}")
        try:
            with poisoned(poison):
                fn()
        except Exception as err:  # noqa: BLE001
            failed(name, err)
        write_json()
    print_tables()
    timer.cancel()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
