"""`pytest benchmarks/`: options, the shared models, and the JSON written at the end.

The whole-model and floor benchmarks run over the networks of `inception_fast.bench_models`
(`--bench-models`), set up by `inception_fast.bench.ModelBench`, the same code as
`inception-fast bench`. Every benchmark validates what it times (BENCHMARKING.md's 2x rule) and
appends one row to the session's results; at the end of the session the rows go to
`<results-dir>/<date>-<card>-<commit>-pytest.json` with the card, versions and commit.
On a machine without a GPU the CPU comparisons run and nothing is written unless
`--results-dir` is given (CPU numbers are not results).
"""

from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path

import pytest
import torch

from inception_fast import anchors, bench, bench_models
from inception_fast.testing import calibrated_inception_v4

RESULTS_DIR = Path(__file__).parent / "results"
GPU_DEFAULTS = {"batches": "1,32,256", "dtypes": "fp16,bf16,fp32-tf32"}
CPU_DEFAULTS = {"batches": "1,2", "dtypes": "fp32"}
ON_GPU = torch.cuda.is_available()


def pytest_addoption(parser):
    group = parser.getgroup("inception_fast benchmarks")
    group.addoption("--bench-models", help=f"comma list of networks (default: all of "
                    f"{', '.join(bench_models.MODELS)}); one optimize() does not accept yet is skipped")
    group.addoption("--max-autotune", action="store_true",
                    help="also time torch.compile max-autotune, without and with freezing (minutes a shape)")
    group.addoption("--no-compile", action="store_true", help="skip every torch.compile anchor")
    group.addoption("--compile-anchors", help=f"comma list from {', '.join(anchors.COMPILE_ANCHORS)} "
                    f"(default {','.join(anchors.DEFAULT_COMPILE_ANCHORS)})")
    group.addoption("--compile-every-batch", action="store_true",
                    help="each torch.compile anchor at every batch (default: freezing default from batch 32 "
                    "up, reduce-overhead + freezing up to 32)")
    group.addoption("--no-floor", action="store_true", help="skip the cuDNN conv floor")
    group.addoption("--results-dir", help=f"where the JSON goes (default on a GPU: {RESULTS_DIR})")
    group.addoption("--bench-batches", help="comma list (GPU default 1,32,256; CPU 1,2)")
    group.addoption("--bench-dtypes", help="comma list of fp16,bf16,fp32,fp32-tf32 (GPU default "
                    "fp16,bf16,fp32-tf32; CPU fp32)")
    group.addoption("--bench-budget-ms", type=float, help="event-timed work per configuration")
    group.addoption("--image-size", type=int, help="square input size (default: each model's own)")


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


def bench_model_names(config) -> list[str]:
    value = config.getoption("--bench-models")
    names = [v.strip() for v in value.split(",") if v.strip()] if value else list(bench_models.MODELS)
    unknown = [n for n in names if n not in bench_models.MODELS]
    if unknown:
        raise pytest.UsageError(f"--bench-models: unknown {unknown}; use {', '.join(bench_models.MODELS)}")
    return names


def pytest_generate_tests(metafunc):
    """Models, batches and dtypes come from the options, so a short GPU run is a command-line
    choice."""
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", bench_model_names(metafunc.config))
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
    """The BN-calibrated random reference Inception-v4 (fp32, CPU), the network the tests use."""
    return calibrated_inception_v4(seed=0, image_size=image_size or 299)


def pytest_collection_modifyitems(config, items):
    """Run the items of one (model, dtype) together, so one network at a time is on the GPU."""
    def key(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        return (params.get("model_name", ""), params.get("dtype_name", ""))

    items.sort(key=key)  # stable: the order within a (model, dtype) is kept


class ModelBenches:
    """The `inception_fast.bench.ModelBench` of the current (model, dtype), and the inputs,
    reference output and eager error of the current batch; the previous ones are released."""

    def __init__(self, config, device: torch.device, results):
        self.config, self.device, self.results = config, device, results
        self.key, self.current = None, None
        self.batch_key, self.batch_value = None, None

    def options(self, model_name: str, dtype_name: str) -> bench.BenchOptions:
        get = self.config.getoption
        try:
            compile_anchors = anchors.parse_compile_anchors(get("--compile-anchors"))
        except ValueError as err:
            raise pytest.UsageError(f"--compile-anchors: {err}") from None
        return bench.BenchOptions(
            model=model_name, device=str(self.device), dtype=dtype_name,
            batches=tuple(bench_batches(self.config)),
            image_size=get("--image-size"), compile=not get("--no-compile"), compile_anchors=compile_anchors,
            max_autotune=get("--max-autotune"), compile_every_batch=get("--compile-every-batch"),
            floor=not get("--no-floor"), budget_ms=get("--bench-budget-ms"),
        )

    def get(self, model_name: str, dtype_name: str) -> bench.ModelBench:
        key = (model_name, dtype_name)
        if key != self.key:
            self.key, self.current, self.batch_key, self.batch_value = None, None, None, None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                self.current = bench.ModelBench(self.options(model_name, dtype_name), self.device)
            except RuntimeError as err:  # e.g. a library the network comes from is not installed
                pytest.skip(f"{model_name}: {err}")
            self.key = key
            if self.current.unsupported:  # said once in the results, as `inception-fast bench` does
                self.results.add(self.current.unsupported_row())
        return self.current

    def reference(self, model: bench.ModelBench, batch: int):
        """(inputs, reference output, eager error) of `batch`, computed once per batch."""
        if self.batch_key != (self.key, batch):
            self.batch_value = None
            inputs = model.inputs(batch)
            self.batch_value = (inputs, *model.expected(inputs))
            self.batch_key = (self.key, batch)
        return self.batch_value


@pytest.fixture(scope="session")
def model_benches(pytestconfig, device, results) -> ModelBenches:
    return ModelBenches(pytestconfig, device, results)


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
            "schema": bench.SCHEMA,
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
        "models": bench_model_names(pytestconfig),
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
