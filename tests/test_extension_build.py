"""The C++/CUDA extension compiles (warning-free), loads and registers its ops: a compile error
fails CI, which has nvcc but no GPU. Skipped only where no CUDA toolkit is found."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from inception_fast import cache, extension

ROOT = Path(__file__).resolve().parents[1]
needs_nvcc = pytest.mark.skipif(extension.find_cuda_home() is None, reason="no CUDA toolkit (nvcc) found")
SCHEMA = (
    "inception_fast::cuda_conv_stage(Tensor input, Tensor(a!) work, Tensor(b!) output, int[] problems, "
    "Tensor weights, Tensor bias, Tensor col_dst, Tensor col_flags) -> ()"
)


def _build_in_a_child(directory: Path) -> subprocess.CompletedProcess:
    """extension.build(directory) in a fresh process (a process can load the op library once)."""
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from inception_fast import extension
        library = extension.build(Path({str(directory)!r}), verbose=True)
        print("LIBRARY", library)
        print("SCHEMA", torch.ops.inception_fast.cuda_conv_stage.default._schema)
    """)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@needs_nvcc
def test_fresh_build_is_warning_free_and_survives_a_stale_lock_and_a_damaged_library(tmp_path):
    """Build in a new directory with the `lock` file a killed torch build leaves behind already
    there: no hang, no warning. Then damage the library: the next build relinks it (before, ninja
    trusted it and every load failed with "Could not load this library")."""
    (tmp_path / "lock").write_text("")
    old = time.time() - 3600
    os.utime(tmp_path / "lock", (old, old))
    done = _build_in_a_child(tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert f"SCHEMA {SCHEMA}" in done.stdout
    compiler_warnings = [line for line in log.splitlines() if "warning:" in line or "warning #" in line]
    assert not compiler_warnings, "\n".join(compiler_warnings)
    library = Path(done.stdout.split("LIBRARY ")[1].split()[0])
    assert library.exists()

    for damage in (b"", b"not an ELF file"):  # an interrupted link; a damaged file
        library.write_bytes(damage)
        done = _build_in_a_child(tmp_path)
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        assert f"SCHEMA {SCHEMA}" in done.stdout
        assert library.stat().st_size > 100_000
    assert "does not load" in done.stderr and str(library) in done.stderr


def test_a_stuck_builder_makes_others_give_up_naming_it(monkeypatch, tmp_path):
    """Before: a builder that held the lock and never exited blocked every later build forever."""
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("INCEPTION_FAST_BUILD_TIMEOUT_S", "0.5")
    monkeypatch.setenv("CUDA_HOME", os.environ.get("CUDA_HOME", ""))  # build() sets it: restored after
    monkeypatch.setattr(cpp, "CUDA_HOME", cpp.CUDA_HOME)
    monkeypatch.setattr(extension, "find_cuda_home", lambda: str(tmp_path))
    monkeypatch.setattr(extension, "_compile_and_load", lambda *a: pytest.fail("built without the lock"),
                        raising=False)
    outcome = []

    def waiter():
        try:
            extension.build(tmp_path)
        except extension.ExtensionUnavailable as err:
            outcome.append(str(err))

    with cache.file_lock(tmp_path / "builder.flock", None, "a build that never ends"):
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        thread.join(30)
    assert not thread.is_alive(), "the waiting build never gave up"
    assert len(outcome) == 1
    assert f"process {os.getpid()}" in outcome[0] and str(tmp_path / "builder.flock") in outcome[0]


def test_a_library_that_does_not_load_is_removed_and_rebuilt(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("CUDA_HOME", os.environ.get("CUDA_HOME", ""))
    monkeypatch.setattr(cpp, "CUDA_HOME", cpp.CUDA_HOME)
    monkeypatch.setattr(extension, "find_cuda_home", lambda: str(tmp_path))
    library = tmp_path / f"{extension.EXTENSION_NAME}.so"
    library.write_bytes(b"garbage")
    calls = []

    def compile_and_load(directory, verbose):
        calls.append(library.exists())
        if library.exists():  # as ninja does: an existing, newer library is not relinked
            raise OSError(f"Could not load this library: {library}")
        library.write_bytes(b"\x7fELF good")
        return str(library)

    monkeypatch.setattr(extension, "_compile_and_load", compile_and_load)
    assert extension.build(tmp_path) == library
    assert calls == [True, False] and library.read_bytes() == b"\x7fELF good"


@needs_nvcc
def test_load_registers_the_stage_op_with_a_fake_kernel():
    """The library the package would use (the pip-install build, else a just-in-time build)."""
    library = extension.load()
    assert library.exists()
    op = torch.ops.inception_fast.cuda_conv_stage.default
    assert str(op._schema) == SCHEMA
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # the fake kernel lets torch.compile trace the op without a GPU
        kw = {"dtype": torch.float16, "device": "cuda"}
        x, out = torch.empty(2, 9, 9, 64, **kw), torch.empty(2, 4, 4, 64, **kw)
        bias, dst = torch.empty(64, device="cuda"), torch.empty(64, dtype=torch.int32, device="cuda")
        maxpool = [2, 0, 0, 64, 64, 3, 3, 2, 0, 0, -1, 0, 0]
        assert op(x, x.new_empty(0), out, maxpool, x.new_empty(0), bias, dst, dst) is None


def test_arch_flags_default_to_hopper_sass_and_portable_ptx(monkeypatch):
    monkeypatch.delenv("INCEPTION_FAST_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert extension.arch_flags() == [
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_80,code=compute_80",
    ]
    assert extension.arch_flags("9.0a;8.0+PTX") == [
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_80,code=compute_80",
    ]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert extension.arch_flags() == ["-gencode=arch=compute_86,code=sm_86"]
    with pytest.raises(ValueError, match="Ampere"):
        extension.arch_flags("Ampere")


def test_sources_hash_names_the_build():
    digest = extension.sources_hash()
    assert len(digest) == 12 and digest == extension.sources_hash()
    assert all((extension.CSRC_DIR / name).exists() for name in (*extension.SOURCES, *extension.HEADERS))


def test_build_cache_is_per_torch_and_cuda_version(monkeypatch, tmp_path):
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path))
    directory = extension.build_directory()
    assert directory.parent == tmp_path / "build"
    assert torch.__version__.replace("+", "_") in directory.name
    assert f"cuda{torch.version.cuda}" in directory.name
