"""How time to first inference is measured (`inception_fast.first_inference`), without timing
anything: the cache directories each run gets and the bytecode priming."""

from __future__ import annotations

import pytest

from inception_fast import first_inference


@pytest.fixture
def recorded_runs(monkeypatch):
    runs = []

    def fake_measure(config, *, cache_root, bytecode_dir=None, **kwargs):
        runs.append({"config": config, "cache_root": cache_root, "bytecode_dir": bytecode_dir, **kwargs})
        return {"config": config, "seconds": float(len(runs))}

    monkeypatch.setattr(first_inference, "measure", fake_measure)
    return runs


def test_with_installed_bytecode_cold_and_warm_share_one_cache_root(recorded_runs, monkeypatch):
    monkeypatch.setattr(first_inference, "bytecode_is_installed", lambda: True)
    results = first_inference.cold_and_warm("fused", batch=1)
    assert [r["cache"] for r in results] == ["cold", "warm"]
    assert {r["bytecode"] for r in results} == {"installed"}
    assert len(recorded_runs) == 2 and recorded_runs[0]["cache_root"] == recorded_runs[1]["cache_root"]
    assert recorded_runs[0]["bytecode_dir"] is None


def test_without_installed_bytecode_an_untimed_run_primes_it_on_caches_of_its_own(recorded_runs, monkeypatch):
    monkeypatch.setattr(first_inference, "bytecode_is_installed", lambda: False)
    results = first_inference.cold_and_warm("fused", batch=2)
    assert len(recorded_runs) == 3 and len(results) == 2
    priming, cold, warm = recorded_runs
    # The timed runs share the bytecode the priming run wrote, but not its kernel caches.
    assert priming["bytecode_dir"] == cold["bytecode_dir"] == warm["bytecode_dir"] is not None
    assert priming["cache_root"] != cold["cache_root"] == warm["cache_root"]
    assert [r["seconds"] for r in results] == [2.0, 3.0]
    assert {r["bytecode"] for r in results} == {"primed"}


def test_the_bytecode_check_looks_at_the_installed_torch():
    assert isinstance(first_inference.bytecode_is_installed(), bool)


def test_measure_passes_the_bytecode_directory_to_the_child(monkeypatch, tmp_path):
    seen = {}

    class Finished:
        returncode = 0
        stdout = first_inference.RESULT_PREFIX + '{"first_logits": 1.0}\n'
        stderr = ""

    def fake_run(command, env, **kwargs):
        seen.update(command=command, env=env)
        return Finished()

    monkeypatch.setattr(first_inference.subprocess, "run", fake_run)
    first_inference.measure(
        "fused", cache_root=str(tmp_path), device="cpu", bytecode_dir=str(tmp_path / "pyc")
    )
    assert seen["env"]["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pyc")
    assert seen["env"]["TRITON_CACHE_DIR"].startswith(str(tmp_path))
    assert "--image-size" in seen["command"] and "None" not in seen["command"]
