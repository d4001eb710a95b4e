"""`pytest benchmarks/`: options, the shared model, and the JSON written at the end.

Every benchmark validates what it times (BENCHMARKING.md's 2x rule) and appends one row to the
session's results; at the end of the session the rows go to
`<results-dir>/<date>-<card>-<commit>-pytest.json` with the card, versions and commit.
On a machine without a GPU the CPU comparisons run and nothing is written unless
`--results-dir` is given (CPU numbers are not results).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from inception_fast import bench
from inception_fast.testing import calibrated_inception_v4

RESULTS_DIR = Path(__file__).parent / "results"
GPU_DEFAULTS = {"batches": "1,32,256", "dtypes": "fp16,bf16,fp32-tf32"}
CPU_DEFAULTS = {"batches": "1,2", "dtypes": "fp32"}
ON_GPU = torch.cuda.is_available()


def pytest_addoption(parser):
    group = parser.getgroup("inception_fast benchmarks")
    group.addoption("--max-autotune", action="store_true",
                    help="also time torch.compile max-autotune (compiles for minutes per shape)")
    group.addoption("--no-compile", action="store_true", help="skip torch.compile default")
    group.addoption("--results-dir", help=f"where the JSON goes (default on a GPU: {RESULTS_DIR})")
    group.addoption("--bench-batches", help="comma list (GPU default 1,32,256; CPU 1,2)")
    group.addoption("--bench-dtypes", help="comma list of fp16,bf16,fp32,fp32-tf32 (GPU default "
                    "fp16,bf16,fp32-tf32; CPU fp32)")
    group.addoption("--bench-budget-ms", type=float, help="event-timed work per configuration")
    group.addoption("--image-size", type=int, default=299)


def _listed(config, name: str, key: str) -> list[str]:
    value = config.getoption(name) or (GPU_DEFAULTS if ON_GPU else CPU_DEFAULTS)[key]
    return [v.strip() for v in value.split(",") if v.strip()]


def bench_batches(config) -> list[int]:
    return [int(b) for b in _listed(config, "--bench-batches", "batches")]


def bench_dtypes(config) -> list[str]:
    dtypes = _listed(config, "--bench-dtypes", "dtypes")
    unknown = set(dtypes) - set(bench.DTYPES)
    if unknown:
        raise pytest.UsageError(f"--bench-dtypes: unknown {sorted(unknown)}; use {sorted(bench.DTYPES)}")
    return dtypes


def pytest_generate_tests(metafunc):
    """Batches and dtypes come from the options, so a short GPU run is a command-line choice."""
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", bench_batches(metafunc.config), ids=lambda b: f"b{b}")
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", bench_dtypes(metafunc.config))


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture(scope="session")
def image_size(pytestconfig) -> int:
    return pytestconfig.getoption("--image-size")


@pytest.fixture(scope="session")
def reference(image_size):
    """The BN-calibrated random reference (fp32, CPU), the same network the tests use."""
    return calibrated_inception_v4(seed=0, image_size=image_size)


@pytest.fixture(scope="session")
def budget_ms(pytestconfig):
    return pytestconfig.getoption("--bench-budget-ms")


class ResultLog:
    """Rows collected during the session, rewritten to one JSON file after every row (a run
    cut short by a time limit keeps what it measured)."""

    def __init__(self, device: torch.device, settings: dict, path: Path | None):
        self.device = device
        self.settings = settings
        self.path = path
        self.rows: list[dict] = []
        self.first_inference: list[dict] = []
        self._environment = None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def add_first_inference(self, run: dict) -> None:
        self.first_inference.append(run)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.document(), indent=1, default=str) + "\n")

    def document(self) -> dict:
        return {
            "schema": "inception_fast.bench/1",
            "source": "pytest-benchmarks",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": self.environment(),
            "settings": self.settings,
            "results": self.rows,
            "first_inference": self.first_inference,
        }

    def environment(self) -> dict:
        if self._environment is None:
            self._environment = {
                **bench.environment(self.device), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            }
        return self._environment


@pytest.fixture(scope="session")
def results(pytestconfig, device):
    settings = {
        "batches": bench_batches(pytestconfig), "dtypes": bench_dtypes(pytestconfig),
        "image_size": pytestconfig.getoption("--image-size"),
        "timer": "median of CUDA events per call, L2 flushed, inputs rotated (perf_counter on CPU)",
    }
    target = pytestconfig.getoption("--results-dir") or (RESULTS_DIR if ON_GPU else None)
    log = ResultLog(device, settings, None)
    if target is not None:
        env = log.environment()
        card = re.sub(r"[^A-Za-z0-9]+", "-", env["card"]).strip("-").lower()
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{card}-{str(env['commit'])[:8]}-pytest.json"
        log.path = Path(target) / name
    yield log
    if log.path is not None and (log.rows or log.first_inference):
        print(f"\nbenchmark results: {log.path}")


try:
    import pytest_benchmark  # noqa: F401 - the plugin provides the `benchmark` fixture
except ImportError:
    class _NoPytestBenchmark:
        """Stands in for pytest-benchmark where it is not installed: runs the call once, keeps
        no statistics; the results still come from inception_fast.timing."""

        def __init__(self):
            self.extra_info = {}
            self.stats = None

        def pedantic(self, fn, rounds=1, warmup_rounds=0, iterations=1):
            return fn()

    @pytest.fixture
    def benchmark():
        return _NoPytestBenchmark()
