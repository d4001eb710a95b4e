"""The one place that finds the cache directory and reads and writes what is kept there.

``$INCEPTION_FAST_CACHE_DIR`` (default ``~/.cache/inception_fast``) holds three caches:

| what | where | kept by |
|---|---|---|
| Triton tile configs | ``triton_tuning_v3.json`` | `TUNING` |
| backend="auto" choices | ``autoselect.json`` | `BACKEND_CHOICES` |
| just-in-time CUDA builds | ``build/<python, torch, CUDA, arch>/`` | `build_directory()` |

The JSON caches are shared by every process of the user, and each can be damaged (a crash, a
full disk, a hand edit, another version of the package). So:

- every entry is validated on read; a file that is not a JSON object of valid entries is
  reported once (a warning naming it) and replaced by its valid entries;
- a write locks ``<file>.lock`` (flock, released by the kernel when its holder dies), merges
  its entries into what is on disk now and replaces the file atomically (temporary file +
  os.replace), so concurrent processes keep each other's entries and readers never see half
  a file;
- a directory that cannot be used (a file, read-only, ...) costs one warning, after which the
  process keeps its entries in memory: the package works, it just re-tunes next time.

`IndexOfLatest` keeps the lookup indexes that the tile and backend tables are read through.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: atomic replacement still holds, concurrent merges may lose entries
    fcntl = None

LOCK_TIMEOUT_S = 60.0  # a JSON cache's lock is held for milliseconds; past this, keep entries in memory


class CacheWarning(UserWarning):
    """A cache file or directory could not be used as it is; the message says which and what now."""


class LockTimeout(TimeoutError):
    """A file lock was not had in time; the message names its holder and the lock file."""


def root() -> Path:
    """``$INCEPTION_FAST_CACHE_DIR``, else ``~/.cache/inception_fast`` (read on every call)."""
    return Path(os.environ.get("INCEPTION_FAST_CACHE_DIR") or Path.home() / ".cache" / "inception_fast")


_warned: set = set()  # (kind, path) pairs already reported in this process
_warn_lock = threading.Lock()


def _warn_once(kind: str, path: Path, message: str) -> None:
    with _warn_lock:
        if (kind, str(path)) in _warned:
            return
        _warned.add((kind, str(path)))
    warnings.warn(f"inception_fast: {message}", CacheWarning, stacklevel=3)


def _unusable(directory: Path, err: OSError) -> None:
    _warn_once(
        "directory", directory,
        f"the cache directory {directory} cannot be used ({type(err).__name__}: {err}); tuning and "
        "backend choices are kept in memory for this process only. Set INCEPTION_FAST_CACHE_DIR to a "
        "writable directory to keep them.",
    )


def usable_directory(directory: Path) -> bool:
    """Create `directory` if needed and check that files can be made in it (one warning if not)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"no permission to write in {directory}")
    except OSError as err:
        _unusable(directory, err)
        return False
    return True


def build_directory(tag: str) -> Path:
    """``<root>/build/<tag>`` for a just-in-time build; a new temporary directory (one warning)
    when the cache directory cannot be used, so that the build still happens."""
    directory = root() / "build" / tag
    if usable_directory(directory):
        return directory
    return Path(tempfile.mkdtemp(prefix=f"inception_fast_build_{tag}_"))


# --- the inter-process lock ------------------------------------------------------------------


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextmanager
def file_lock(path: Path, timeout_s: float | None, purpose: str, announce: bool = False):
    """Hold an exclusive flock on `path` (created if missing). The holder writes who it is into
    the file, so that a waiter can name it. Raises LockTimeout after `timeout_s` seconds (None:
    wait forever) with a message naming the holder and the lock file. `announce`: say on stderr
    who is being waited for (for waits that may be long, such as a build)."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if announce and delay == 0.01:
                    print(f"inception_fast: waiting for {_holder(path)} to finish {purpose} (lock {path})",
                          file=sys.stderr, flush=True)
                if timeout_s is not None and waited >= timeout_s:
                    raise LockTimeout(
                        f"gave up {purpose} after waiting {waited:.0f} s for the lock {path}, held by "
                        f"{_holder(path)}. If that process is stuck, end it; or remove the lock file's "
                        f"directory, or point INCEPTION_FAST_CACHE_DIR elsewhere."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock


# --- JSON caches -----------------------------------------------------------------------------


def _atomic_write_json(path: Path, table: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=0, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader sees the old or the new table, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class IndexOfLatest:
    """`build(table)` kept for the last table it was asked about, recognized by identity: the
    tables indexed here (a `JsonCache`'s entries, the shipped tables) are replaced, never changed
    in place, so a first call's thousands of lookups build each index once."""

    def __init__(self, build: Callable[[dict], dict]):
        self.build = build
        self._last: tuple = (None, {})  # (table, its index), replaced in one assignment

    def __call__(self, table: dict) -> dict:
        seen, index = self._last
        if seen is not table:
            index = self.build(table)
            self._last = (table, index)
        return index


class JsonCache:
    """A JSON object of validated entries in a file of the cache directory, shared by processes.

    `is_valid(key, value)` says whether an entry has the right shape. The file is read once per
    process (where INCEPTION_FAST_CACHE_DIR points then), reads come from memory after that, and
    `put` merges into the file under its lock.
    """

    def __init__(self, filename: str, is_valid: Callable[[str, object], bool], describe: str):
        self.filename = filename
        self.is_valid = is_valid
        self.describe = describe  # what an entry should look like, for the warning
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget what was read: the next access reads the file again, from where
        INCEPTION_FAST_CACHE_DIR points then."""
        with self._lock:
            self._path: Path | None = None
            self._table: dict | None = None
            self._memory_only = False  # the directory takes no files: entries live in memory

    def path(self) -> Path:
        return self._path if self._path is not None else root() / self.filename

    def entries(self) -> dict:
        """Every valid entry. Never changed in place (a `put` makes a new dict)."""
        table = self._table  # the hot path: one attribute read, which torch.compile traces too
        return table if table is not None else self._load()

    def get(self, key: str, default=None):
        return self.entries().get(key, default)

    def put(self, key: str, value) -> None:
        """Keep `key` in memory and merge it into the file."""
        if not self.is_valid(key, value):
            raise ValueError(f"{self.filename}: {key!r} = {value!r} is not of the shape {self.describe}")
        with self._lock:
            self._table = {**self.entries(), key: value}
            self._write({key: value})

    def _load(self) -> dict:
        with self._lock:
            if self._table is None:
                self._path = root() / self.filename
                self._table, problem = self._read()
                if problem is not None:
                    self._report(problem)
                    self._write({})  # replace the bad file by its valid entries now
            return self._table

    def _read(self) -> tuple[dict, str | None]:
        """(valid entries on disk, what was wrong with the file or None)."""
        path = self._path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}, None
        except (NotADirectoryError, PermissionError) as err:
            _unusable(path.parent, err)
            self._memory_only = True
            return {}, None
        except OSError as err:
            return {}, f"cannot be read ({type(err).__name__}: {err})"
        try:
            table = json.loads(text)
        except ValueError as err:
            return {}, f"is not valid JSON ({err})"
        if not isinstance(table, dict):
            return {}, f"holds a JSON {type(table).__name__}, not an object"
        valid = {key: value for key, value in table.items() if self.is_valid(key, value)}
        if len(valid) != len(table):
            bad = next(key for key in table if key not in valid)
            return valid, (f"has {len(table) - len(valid)} entries of the wrong shape (e.g. {bad!r}: "
                           f"{json.dumps(table[bad])[:80]}; expected {self.describe})")
        return valid, None

    def _report(self, problem: str) -> None:
        _warn_once("file", self._path, f"the cache file {self._path} {problem}; it is replaced by its valid "
                                       "entries")

    def _write(self, new: dict) -> None:
        """Merge `new` into the file under its lock; the memory table becomes the merged one."""
        path = self._path
        if self._memory_only or not usable_directory(path.parent):
            self._memory_only = True
            return
        try:
            with file_lock(path.with_name(path.name + ".lock"), LOCK_TIMEOUT_S, f"updating {path}"):
                on_disk, problem = self._read()
                if problem is not None:
                    self._report(problem)
                merged = {**self._table, **on_disk, **new}
                if not self._memory_only:
                    _atomic_write_json(path, merged)
        except LockTimeout as err:
            _warn_once("lock", path, f"{err}; this entry is kept in memory only")
            return
        except OSError as err:  # e.g. read-only: the directory exists but takes no new files
            _unusable(path.parent, err)
            self._memory_only = True
            return
        self._table = merged


def _is_tile_config(key: str, value) -> bool:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, k_parts): six positive ints."""
    return (
        isinstance(value, list) and len(value) == 6
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _is_backend_choice(key: str, value) -> bool:
    """Key "card|torch<version>|dtype|block@HxW|b<bucket>"; {"backend": str, "ms": {str: number}}."""
    parts = key.split("|")
    return (
        len(parts) == 5 and parts[4][:1] == "b" and parts[4][1:].isdigit()
        and isinstance(value, dict) and isinstance(value.get("backend"), str)
        and isinstance(value.get("ms"), dict)
        and all(isinstance(k, str) and _is_number(v) for k, v in value["ms"].items())
    )


TUNING = JsonCache(
    "triton_tuning_v3.json",  # v3: configs carry k_parts
    _is_tile_config,
    "a list of 6 positive ints (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, k_parts)",
)
BACKEND_CHOICES = JsonCache(
    "autoselect.json",
    _is_backend_choice,
    'key "card|torch<version>|dtype|block@HxW|b<bucket>" -> {"backend": name, "ms": {name: number}}',
)
