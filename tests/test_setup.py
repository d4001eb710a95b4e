"""setup.py with a CPU-only torch and nvcc present: the package installs, and says that the CUDA
extension was skipped (.ci/run also installs against a real CPU-only torch build)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_toolkit(directory: Path) -> Path:
    """What find_cuda_home() looks for: bin/nvcc and include/cuda_runtime.h."""
    (directory / "bin").mkdir(parents=True)
    (directory / "include").mkdir()
    (directory / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (directory / "include" / "cuda_runtime.h").write_text("")
    return directory


def test_setup_with_a_cpu_only_torch_skips_the_extension(tmp_path):
    """Before: `OSError: CUDA_HOME environment variable is not set` from CUDAExtension."""
    # A CPU-only torch reports no CUDA version, and its cpp_extension knows no toolkit.
    script = textwrap.dedent("""
        import runpy, sys
        import torch
        import torch.utils.cpp_extension as cpp
        torch.version.cuda = None
        cpp.CUDA_HOME = None
        sys.argv = ["setup.py", "--version"]
        runpy.run_path("setup.py", run_name="__main__")
    """)
    env = {**os.environ, "CUDA_HOME": str(_fake_toolkit(tmp_path / "cuda"))}
    for name in ("INCEPTION_FAST_SKIP_CUDA_BUILD", "INCEPTION_FAST_FORCE_BUILD"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].count(".") == 2  # the version
    assert "built without CUDA: the CUDA extension was skipped" in done.stderr

    env["INCEPTION_FAST_FORCE_BUILD"] = "1"  # a build that must happen fails, saying why
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "built without CUDA" in done.stderr
