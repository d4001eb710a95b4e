"""A progress bar for long feature extractions: tqdm where it is installed, else one stderr line."""

from __future__ import annotations

import sys
import time

# Runs shorter than this many batches finish before a bar would say anything useful.
LONG_RUN_BATCHES = 20


class _LineProgress:
    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = self.last = time.perf_counter()

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= 0.5 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"\r{self.desc}: {self.done}/{self.total} images, {rate:,.0f}/s", end="", file=sys.stderr)

    def close(self) -> None:
        print(file=sys.stderr)


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, batches: int, enabled: bool | None, desc: str = "features"):
    """enabled: True, False, or None for "on when the run is long" (LONG_RUN_BATCHES)."""
    if enabled is None:
        enabled = batches >= LONG_RUN_BATCHES
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)
