"""The cache directory (inception_fast.cache): validated reads, merged atomic writes shared by
processes, and an in-memory fallback when the directory cannot be used."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import warnings
from pathlib import Path

import pytest

from inception_fast import cache
from inception_fast.backends import auto_backend
from inception_fast.cache import CacheWarning

CHOICE = {"backend": "triton", "ms": {"triton": 0.5, "cuda": 0.75}}
CHOICE_KEY = "NVIDIA H100|torch2.14.1|float16|InceptionA384-384@35x35|b32"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    for table in (cache.TUNING, cache.BACKEND_CHOICES):  # read afresh here, restored after
        for name in ("_path", "_table", "_memory_only"):
            monkeypatch.setattr(table, name, getattr(table, name))
        table.reset()
    return tmp_path / "cache"


def _cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


def test_root_follows_the_environment(monkeypatch, tmp_path):
    assert cache.root() == tmp_path / "cache"
    assert cache.TUNING.path() == tmp_path / "cache" / "triton_tuning_v3.json"
    assert auto_backend.cache_file() == tmp_path / "cache" / "autoselect.json"
    monkeypatch.delenv("INCEPTION_FAST_CACHE_DIR")
    assert cache.root() == Path.home() / ".cache" / "inception_fast"


def test_a_file_is_read_once_and_reset_reads_it_again(fresh_cache):
    cache.TUNING.put("a", [64, 64, 32, 4, 4, 1])
    (fresh_cache / "triton_tuning_v3.json").write_text('{"b": [64, 64, 32, 4, 4, 2]}')
    assert cache.TUNING.get("b") is None and cache.TUNING.get("a") == [64, 64, 32, 4, 4, 1]
    cache.TUNING.reset()
    assert cache.TUNING.get("b") == [64, 64, 32, 4, 4, 2] and cache.TUNING.get("a") is None


def test_entries_round_trip_through_the_file(fresh_cache):
    cache.TUNING.put("InceptionA384-384/s0/35x35/b1/float16/H100", [64, 64, 32, 4, 4, 2])
    cache.BACKEND_CHOICES.put(CHOICE_KEY, CHOICE)
    assert json.loads((fresh_cache / "triton_tuning_v3.json").read_text()) == {
        "InceptionA384-384/s0/35x35/b1/float16/H100": [64, 64, 32, 4, 4, 2]
    }
    assert json.loads((fresh_cache / "autoselect.json").read_text()) == {CHOICE_KEY: CHOICE}
    assert not list(fresh_cache.glob("*.tmp"))  # the temporary files were renamed into place


def test_an_entry_of_the_wrong_shape_is_not_written():
    with pytest.raises(ValueError, match="6 positive ints"):
        cache.TUNING.put("key", [64, 64, 32])
    with pytest.raises(ValueError, match="backend"):
        cache.BACKEND_CHOICES.put(CHOICE_KEY, {"backend": "triton"})


def _write_keys(prefix: str, count: int, start=None) -> None:
    if start is not None:
        start.wait(60)  # both processes write at the same time, as two jobs tuning at once do
    for i in range(count):
        cache.TUNING.put(f"{prefix}/{i}", [64, 64, 32, 4, 4, 1 + i % 4])


def test_two_processes_keep_all_their_entries(fresh_cache):
    """Before: each process wrote its own view back, and about 130 of 300 entries were lost."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as two users' jobs are
    start = context.Barrier(2)
    workers = [context.Process(target=_write_keys, args=(name, 150, start)) for name in ("first", "second")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    table = json.loads((fresh_cache / "triton_tuning_v3.json").read_text())
    assert len(table) == 300
    assert set(table) == {f"{p}/{i}" for p in ("first", "second") for i in range(150)}


def test_threads_keep_all_their_entries(fresh_cache):
    threads = [threading.Thread(target=_write_keys, args=(f"thread{t}", 40)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads((fresh_cache / "triton_tuning_v3.json").read_text())) == 120


@pytest.mark.parametrize("content, problem", [
    ('{"InceptionA/s0/35x35/b1/float16/H100": [64, 64]}', "1 entries of the wrong shape"),
    ('{"key": "not a config"}', "wrong shape"),
    ("[1, 2, 3]", "holds a JSON list, not an object"),
    ('{"truncated": [64, 6', "is not valid JSON"),
    ("", "is not valid JSON"),
])
def test_a_bad_tuning_file_is_reported_once_and_replaced(fresh_cache, content, problem):
    """Before: a wrong-shaped entry made every forward raise TypeError, naming no file."""
    fresh_cache.mkdir()
    path = fresh_cache / "triton_tuning_v3.json"
    path.write_text(content)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cache.TUNING.get("InceptionA/s0/35x35/b1/float16/H100") is None
        cache.TUNING.put("good", [64, 64, 32, 4, 4, 1])
        assert cache.TUNING.get("good") == [64, 64, 32, 4, 4, 1]
    messages = _cache_warnings(record)
    assert len(messages) == 1, messages
    assert str(path) in messages[0] and problem in messages[0]
    assert json.loads(path.read_text()) == {"good": [64, 64, 32, 4, 4, 1]}


def test_a_wrong_shaped_choice_keeps_its_valid_neighbours(fresh_cache):
    """Before: `entry["backend"]` raised AttributeError/TypeError on every GPU forward."""
    fresh_cache.mkdir()
    path = fresh_cache / "autoselect.json"
    path.write_text(json.dumps({
        CHOICE_KEY: CHOICE,
        CHOICE_KEY.replace("b32", "b1"): "triton",  # a bare name, as an older format might hold
        CHOICE_KEY.replace("b32", "b4"): {"backend": "cuda", "ms": {"cuda": "fast"}},
        "no separators": CHOICE,
    }))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows = auto_backend.choice_table()
    assert [(r["batch_bucket"], r["backend"]) for r in rows] == [(32, "triton")]
    messages = _cache_warnings(record)
    assert len(messages) == 1 and str(path) in messages[0] and "3 entries of the wrong shape" in messages[0]
    assert json.loads(path.read_text()) == {CHOICE_KEY: CHOICE}  # replaced by its valid entries


def test_a_cache_directory_that_is_a_file_falls_back_to_memory(monkeypatch, tmp_path):
    """Before: a bare FileExistsError after minutes of tuning."""
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(blocker))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cache.TUNING.get("a") is None
        cache.TUNING.put("a", [64, 64, 32, 4, 4, 1])
        cache.BACKEND_CHOICES.put(CHOICE_KEY, CHOICE)
        assert cache.TUNING.get("a") == [64, 64, 32, 4, 4, 1]
        assert cache.BACKEND_CHOICES.get(CHOICE_KEY) == CHOICE
    messages = _cache_warnings(record)
    assert len(messages) == 1, messages  # one warning for the directory, not one per cache or write
    assert str(blocker) in messages[0] and "in memory" in messages[0]
    assert blocker.read_text() == ""


def test_the_build_directory_falls_back_to_a_temporary_one(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(blocker))
    with pytest.warns(CacheWarning, match="cannot be used"):
        directory = cache.build_directory("py311-torch2-cuda12-abc")
    assert directory.is_dir() and os.access(directory, os.W_OK)
    directory.rmdir()


def _read_only_scenario(directory: str, queue) -> None:
    if os.geteuid() == 0:  # root writes anywhere: become an ordinary user first
        os.setgid(65534)
        os.setuid(65534)
    os.environ["INCEPTION_FAST_CACHE_DIR"] = directory
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = cache.BACKEND_CHOICES.get(CHOICE_KEY)
        cache.TUNING.put("new", [64, 64, 32, 4, 4, 1])
        cache.TUNING.put("newer", [64, 64, 32, 4, 4, 2])
        kept = [cache.TUNING.get("new"), cache.TUNING.get("newer")]
    queue.put((old, kept, _cache_warnings(record)))


def test_a_read_only_cache_directory_is_read_and_kept_in_memory():
    # Not under pytest's tmp_path: its parents are closed to other users.
    directory = Path(tempfile.mkdtemp(prefix="inception_fast_read_only_"))
    try:
        (directory / "autoselect.json").write_text(json.dumps({CHOICE_KEY: CHOICE}))
        directory.chmod(0o555)  # r-x for everyone
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        worker = context.Process(target=_read_only_scenario, args=(str(directory), queue))
        worker.start()
        old, kept, messages = queue.get(timeout=60)
        worker.join(60)
    finally:
        directory.chmod(0o700)
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    assert old == CHOICE  # what was there is still used
    assert kept == [[64, 64, 32, 4, 4, 1], [64, 64, 32, 4, 4, 2]]
    assert len(messages) == 1 and str(directory) in messages[0] and "in memory" in messages[0], messages


def test_a_lock_held_too_long_names_its_holder(tmp_path):
    lock = tmp_path / "x.lock"
    with cache.file_lock(lock, 5, "holding"):
        with pytest.raises(cache.LockTimeout) as info:
            with cache.file_lock(lock, 0.2, "building the thing"):
                pass
    message = str(info.value)
    assert f"process {os.getpid()}" in message and str(lock) in message and "building the thing" in message
    with cache.file_lock(lock, 0.2, "again"):  # released when its holder left
        pass


def test_tuning_into_a_cache_directory_that_is_a_file_keeps_its_result(monkeypatch, tmp_path):
    """Before: a bare FileExistsError at the end of tuning. The timing itself needs a GPU, so
    it is stood in for; the cache handling after it is the real one."""
    tuning = pytest.importorskip("inception_fast.kernels.triton.tuning")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(blocker))
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "1")  # tuning on first use (the default only reads)
    monkeypatch.setattr(tuning, "_shipped_config", lambda key, device: None)
    monkeypatch.setattr(tuning, "_time", lambda launch, config: float(config[0] * config[1]))
    configs = [(128, 128, 64, 8, 3, 1), (64, 64, 64, 4, 4, 1), (64, 128, 64, 4, 4, 1)]
    with pytest.warns(CacheWarning, match="in memory"):
        best = tuning.choose("conv1x1s1p0.0:384>320/35x35/b1/float16/card", None, configs, configs[0])
    assert best == (64, 64, 64, 4, 4, 1)
    assert tuning.choose("conv1x1s1p0.0:384>320/35x35/b1/float16/card", None, [], configs[0]) == best


def test_an_index_is_built_once_per_table():
    built = []
    index = cache.IndexOfLatest(lambda table: built.append(table) or {"n": len(table)})
    first, second = {"a": 1}, {"a": 1, "b": 2}
    assert index(first) == {"n": 1} and index(first) == {"n": 1}
    assert index(second) == {"n": 2}  # a new table (the cache replaces its dict on a put)
    assert built == [first, second]
