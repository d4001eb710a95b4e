"""The command line, run as a user runs it: `python -m inception_fast ...` in a fresh process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

SMALL_IMAGE = 107  # Inception-v4 needs >= 75x75; 107 keeps the CPU run to seconds


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inception_fast", *args],
        check=False, capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_info_reports_versions_and_every_backend():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "torch " in out and "triton" in out
    for backend in ("torch", "triton", "cuda"):
        assert f"  {backend} " in out, out
    # Every unusable backend says why.
    for line in out.splitlines():
        if "NOT usable" in line:
            assert line.split("NOT usable:", 1)[1].strip(), line
    assert "backend='auto' -> " in out


def test_info_without_a_gpu_is_truthful_about_auto_and_cuda_graphs():
    """Before: "auto NOT usable" followed by "backend='auto' -> torch", and
    "optimize(cuda_graph=True): available" on a machine without a GPU."""
    proc = run_cli("info", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, on any machine
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    auto = [line for line in lines if line.strip().startswith("auto ")]
    assert len(auto) == 1 and "NOT usable" not in auto[0], lines
    assert auto[0].startswith("  auto    usable: backend='auto' -> torch (on the CPU"), lines
    graphs = next(line for line in lines if line.startswith("optimize(cuda_graph=True)"))
    assert "not available here" in graphs and "GPU backend" in graphs


@pytest.mark.parametrize(("setting", "said"), [
    ("3", "compiled ahead in up to 3 worker processes"),
    ("0", "compiled one by one as they are launched (INCEPTION_FAST_COMPILE_WORKERS=0)"),
    ("many", "INCEPTION_FAST_COMPILE_WORKERS='many': give a number of processes"),
])
def test_info_says_how_a_first_call_compiles(setting, said):
    proc = run_cli("info", env={**os.environ, "INCEPTION_FAST_COMPILE_WORKERS": setting})
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "a first call's new Triton kernels" in line)
    assert said in line, line


def test_info_names_a_wrong_auto_experiments_setting_instead_of_failing():
    proc = run_cli("info", env={**os.environ, "INCEPTION_FAST_AUTO_EXPERIMENTS": "tma"})
    assert proc.returncode == 0, proc.stderr
    assert "INCEPTION_FAST_AUTO_EXPERIMENTS='tma': tma is not an experimental backend" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_usage_lists_only_public_commands_and_every_option_has_help():
    from inception_fast.cli import build_parser

    parser = build_parser()
    assert "_first-inference" not in parser.format_usage() + parser.format_help()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"info", "bench", "ttfi", "tune", "fid"}
    for name in ("info", "ttfi", "tune"):
        assert commands[name].description, name
        for action in commands[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"


def test_tune_without_a_gpu_says_so():
    proc = run_cli("tune", "--model", "googlenet", "--batch", "1")
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_the_fresh_process_of_ttfi_is_still_reachable():
    proc = run_cli("_first-inference", "--help")
    assert proc.returncode == 0 and "--config" in proc.stdout


def test_bench_on_cpu_validates_and_prints_the_table(tmp_path):
    result_path = tmp_path / "bench.json"
    proc = run_cli(
        "bench", "--device", "cpu", "--batch", "1", "--image-size", str(SMALL_IMAGE),
        "--budget-ms", "200", "--floor-budget-ms", "2", "--json", str(result_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("configuration"))
    for column in ("batch", "median ms", "images/s", "peak MiB", "x eager", "x anchor", "rel L2", "check"):
        assert column in header
    document = json.loads(result_path.read_text())
    timed = [r for r in document["results"] if r.get("suite") == "model" and r.get("kind") != "floor"
             and "median_ms" in r]
    assert timed and all(r["peak_mb"] is None for r in timed)  # the GPU's allocator only
    fused = [line for line in lines if line.startswith("fused default")]
    assert len(fused) == 1 and fused[0].rstrip().endswith("pass"), proc.stdout
    assert any(line.startswith(("timm eager", "reference eager")) for line in lines)
    assert any(line.startswith("the anchor at batch 1: ") for line in lines)
    # The floor: one line in the table, then one per block (22 blocks of Inception-v4) and the total.
    assert any(line.startswith("convs alone (F.conv2d, CPU)") for line in lines)
    assert any(line.startswith("features.21 InceptionC -> 4 stages") for line in lines)

    document = json.loads(result_path.read_text())
    assert document["schema"] == "inception_fast.bench/2" and document["model"] == "inception_v4"
    assert document["environment"]["torch"] and "commit" in document["environment"]
    info = document["model_info"]
    assert info["supported"] and info["image_size"] == SMALL_IMAGE and info["gflops_per_image"] > 0
    rows = {r["config_id"]: r for r in document["results"] if r["suite"] == "model"}
    row = rows["fused-default"]
    assert row["config"] == "fused default" and row["model"] == "inception_v4"
    assert row["batch"] == 1 and row["image_size"] == SMALL_IMAGE and row["method"] == "perf_counter"
    assert row["median_ms"] > 0 and row["images_per_s"] > 0
    # fp32 is judged against float64; the fused error is real (not zero) and within the bound.
    assert row["reference_dtype"] == "float64"
    assert 0 < row["rel_l2"] <= row["bound"]
    assert rows["floor"]["convs"] == 149
    blocks = [r for r in document["results"] if r["suite"] == "conv-floor"]
    assert len(blocks) == 22 and sum(r["convs"] for r in blocks) == 149


def test_bench_runs_another_network_of_the_family(tmp_path):
    result_path = tmp_path / "bench.json"
    proc = run_cli("bench", "--device", "cpu", "--model", "googlenet", "--batch", "1", "--image-size", "64",
                   "--budget-ms", "100", "--floor-budget-ms", "2", "--json", str(result_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fused = [line for line in proc.stdout.splitlines() if line.startswith("fused default")]
    assert len(fused) == 1 and fused[0].rstrip().endswith("pass"), proc.stdout
    document = json.loads(result_path.read_text())
    assert document["model"] == "googlenet" and document["model_info"]["supported"] is True


def test_bench_rejects_a_too_small_image():
    proc = run_cli("bench", "--device", "cpu", "--batch", "1", "--image-size", "64")
    assert proc.returncode == 2
    assert "at least 75" in proc.stderr


def test_bench_refuses_an_unusable_backend_with_its_reason():
    proc = run_cli("bench", "--device", "cpu", "--batch", "1", "--image-size", "75", "--backend", "no-such")
    assert proc.returncode == 2
    assert "unknown backend" in proc.stderr


@pytest.mark.parametrize("values, expected", [
    (["1,32", "256"], (1, 32, 256)), (["2"], (2,)), (["1,8,32,256"], (1, 8, 32, 256)),
])
def test_batch_option_is_repeatable_and_comma_separated(values, expected):
    from inception_fast.cli import _batches

    assert _batches(values) == expected


def _bench_parser():
    from inception_fast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["bench"]


def test_every_bench_option_says_what_it_does():
    options = [a for a in _bench_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    missing = [a.option_strings[0] for a in options if not (a.help or "").strip()]
    assert missing == []


def test_bench_options_from_the_command_line():
    from inception_fast.cli import bench_options

    parser = _bench_parser()
    args = parser.parse_args(["--device", "cpu", "--model", "fid_inception_v3", "--batch", "1,8,32,256",
                              "--compile-anchors", "compile-freezing", "--compile-every-batch", "--no-floor"])
    options = bench_options(args, parser)
    assert options.batches == (1, 8, 32, 256) and options.model == "fid_inception_v3"
    assert options.dtype == "fp32"  # on the CPU; on a GPU the model's own (fp32-tf32 for FID)
    assert options.compile_anchors == ("compile-freezing",) and options.compile_every_batch
    assert not options.floor and options.image_size is None
    args = parser.parse_args(["--device", "cpu", "--max-autotune"])
    assert bench_options(args, parser).selected_compile_anchors() == (
        "compile", "compile-freezing", "compile-ro-freezing", "compile-max-autotune",
        "compile-max-autotune-freezing")


def test_bench_rejects_an_unknown_compile_anchor_before_building_anything():
    proc = run_cli("bench", "--device", "cpu", "--compile-anchors", "compile-fast")
    assert proc.returncode == 2
    assert "compile-fast" in proc.stderr and "compile-ro-freezing" in proc.stderr
