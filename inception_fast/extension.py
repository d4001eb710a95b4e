"""The C++/CUDA extension (csrc/): find it prebuilt, or build it just in time, and load its ops.

`pip install` builds ``inception_fast/_C_<sources hash>*.so`` where nvcc is present (see
setup.py). When that is missing, or was built from other sources, `load()` compiles csrc/ with
ninja through `torch.utils.cpp_extension` into a directory per Python, torch and CUDA version
of the cache directory (`inception_fast.cache`), printing a progress message on stderr while it
builds. One process builds at a time; the others wait for it, at most
``$INCEPTION_FAST_BUILD_TIMEOUT_S`` seconds (default 1800), then give up with a message naming
the process that holds the build lock. A cached library that does not load (an interrupted
link, a damaged file) is rebuilt.

The ops land in the ``inception_fast`` namespace (``torch.ops.inception_fast.cuda_*``) with
fake implementations (registered here, or Meta kernels in C++), so they trace under torch.compile.

``cuda_gemm_conv1x1`` runs CUTLASS 3.x sm90 kernels; they are compiled only where the CUTLASS
headers are found (``$INCEPTION_FAST_CUTLASS_DIR``, a CUTLASS checkout or its ``include``
directory, else the ``nvidia-cutlass`` wheel's ``cutlass_library`` package). Without them the
extension builds as before and that op raises, saying how to get them.

This module imports nothing from the package at import time: setup.py loads it by file path
before the package is installed, for `arch_flags()` and `sources_hash()`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = PACKAGE_DIR.parent / "csrc"
# The 1x1-conv GEMM and the k x k conv on CUTLASS: one file per (op, dtype) with every tile
# shape (most of a file's compile time is parsing CUTLASS's headers), compiled only with them.
CUTLASS_SOURCES = (
    *(f"gemm_conv1x1_{dtype}.cu" for dtype in ("fp16", "bf16", "tf32")),
    *(f"conv_fprop_{dtype}.cu" for dtype in ("fp16", "bf16", "tf32")),
)
SOURCES = (
    "bindings.cpp", "launch_program.cpp", "split_k_workspace.cpp", "conv_stage_fp16.cu", "conv_stage_bf16.cu",
    *CUTLASS_SOURCES,
)
HEADERS = (
    "stage_args.h", "conv_stage.cuh", "check_text.h", "gemm_conv1x1.h", "gemm_conv1x1.cuh", "conv_fprop.h",
    "conv_fprop.cuh", "conv_mainloop_in_gemm_kernel.cuh", "programmatic_launch.h", "prepared_launch.h",
    "cutlass_ops.h", "split_k_scheduler.cuh", "split_k_workspace.h",
)
EXTENSION_NAME = "inception_fast_cuda"
STAMP_NAME = f"{EXTENSION_NAME}.stamp"  # beside the library: the files and flags it was built from

# Hopper SASS with the sm_90a feature set, plus PTX for every other card from Ampere on (the
# kernels need mma.sync bf16, ldmatrix and cp.async: sm_80).
DEFAULT_ARCH_FLAGS = (
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
)
NVCC_FLAGS = ("-O3", "-lineinfo", "-Xptxas=-warn-spills", "-Xcudafe=--display_error_number")
CXX_FLAGS = ("-O3",)
# A build takes a few minutes (most of it the six CUTLASS files); a waiter gives up on a holder
# past this.
BUILD_TIMEOUT_S = 1800.0

_state: dict = {}


class ExtensionUnavailable(RuntimeError):
    """The CUDA extension cannot be loaded here; the message says why."""


def arch_flags(arch_list: str | None = None) -> list[str]:
    """nvcc -gencode flags from INCEPTION_FAST_CUDA_ARCH_LIST or TORCH_CUDA_ARCH_LIST (e.g.
    "9.0a;8.0+PTX"), else the default: sm_90a SASS and compute_80 PTX."""
    if arch_list is None:
        arch_list = os.environ.get("INCEPTION_FAST_CUDA_ARCH_LIST") or os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch_list:
        return list(DEFAULT_ARCH_FLAGS)
    flags = []
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        arch = entry.removesuffix("+PTX").replace(".", "")
        if not arch[:2].isdigit():
            raise ValueError(f"cannot read CUDA arch {entry!r} in {arch_list!r}; write e.g. 9.0a or 8.0+PTX")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    return flags


def cutlass_include_dir() -> Path | None:
    """The CUTLASS headers' include directory (holding cutlass/cutlass.h and cute/), or None.

    From $INCEPTION_FAST_CUTLASS_DIR (a CUTLASS checkout or its include directory), else from the
    nvidia-cutlass wheel, whose `cutlass_library` package carries them under source/include (found
    without importing it).
    """
    candidates = []
    configured = os.environ.get("INCEPTION_FAST_CUTLASS_DIR")
    if configured:
        candidates += [Path(configured), Path(configured) / "include"]
    else:
        try:
            spec = importlib.util.find_spec("cutlass_library")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "source" / "include")
    for directory in candidates:
        if (directory / "cutlass" / "cutlass.h").is_file() and (directory / "cute" / "tensor.hpp").is_file():
            return directory.resolve()
    return None


def cutlass_version(include_dir: Path | None = None) -> str | None:
    """"major.minor.patch" of the CUTLASS headers found (None without them)."""
    include_dir = include_dir or cutlass_include_dir()
    if include_dir is None:
        return None
    version_h = include_dir / "cutlass" / "version.h"
    text = version_h.read_text() if version_h.is_file() else ""
    parts = [re.search(rf"#define CUTLASS_{part} (\d+)", text) for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(match.group(1) if match else "?" for match in parts)


def cutlass_flags() -> list[str]:
    """Compiler flags for the CUTLASS kernels: the include directory and the switch that compiles
    them (bindings.cpp too: it then dispatches to them); [] without the headers."""
    include_dir = cutlass_include_dir()
    if include_dir is None:
        return []
    # CUTLASS_ENABLE_GDC_FOR_SM90: the kernels' own programmatic-launch waits, placed after their
    # set-up (barriers, cluster sync, descriptor prefetch) so that the set-up overlaps the kernel
    # before them (kernel_entry in gemm_conv1x1.cuh).
    flags = [f"-I{include_dir}", "-DINCEPTION_FAST_WITH_CUTLASS=1", "-DCUTLASS_ENABLE_GDC_FOR_SM90=1"]
    # The conv kernels also need CUTLASS's util headers (tools/util/include beside include/, in
    # a checkout and in the wheel); without them only the GEMM is compiled in.
    util_dir = cutlass_util_include_dir(include_dir)
    if util_dir is not None:
        flags += [f"-I{util_dir}", "-DINCEPTION_FAST_WITH_CUTLASS_CONV=1"]
    return flags


def cutlass_util_include_dir(include_dir: Path) -> Path | None:
    """CUTLASS's util headers (cutlass/util/...) next to its `include_dir`, or None."""
    util_dir = include_dir.parent / "tools" / "util" / "include"
    return util_dir if (util_dir / "cutlass" / "util" / "packed_stride.hpp").is_file() else None


def build_sources() -> list[str]:
    """The csrc/ files compiled here: all of them with the CUTLASS headers, else all but those."""
    if cutlass_include_dir() is not None:
        return list(SOURCES)
    return [name for name in SOURCES if name not in CUTLASS_SOURCES]


def sources_hash() -> str:
    """Short hash of csrc/, the arch flags and the CUTLASS version (or its absence): names the
    build, so a stale build is never used."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((CSRC_DIR / name).read_bytes())
    digest.update(" ".join(arch_flags()).encode())
    digest.update(f"cutlass {cutlass_version()}".encode())
    return digest.hexdigest()[:12]


def find_cuda_home() -> str | None:
    """The CUDA toolkit root (with bin/nvcc and include/cuda_runtime.h), or None.

    An nvcc found on PATH may be a wrapper script outside the toolkit (e.g. /usr/local/bin),
    where torch's guess (the parent of nvcc's directory) lacks the headers.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [str(Path(nvcc).parent.parent), str(Path(nvcc).resolve().parent.parent)]
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in candidates:
        if home and all((Path(home) / part).exists() for part in ("bin/nvcc", "include/cuda_runtime.h")):
            return home
    return None


def build_directory() -> Path:
    """Build cache of this Python, torch, CUDA, arch list and CUTLASS version (a temporary
    directory, with a warning, when the cache directory cannot be used)."""
    import torch

    from . import cache  # here, not at the top: setup.py loads this file outside the package

    arch = hashlib.sha256(f"{' '.join(arch_flags())} cutlass {cutlass_version()}".encode()).hexdigest()[:8]
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    tag = f"{python}-torch{torch.__version__}-cuda{torch.version.cuda}-{arch}"
    return cache.build_directory(tag.replace("+", "_"))


def _prebuilt_library() -> Path | None:
    """The library built at install time, if it was built from the current csrc/."""
    if CSRC_DIR.is_dir():
        pattern = f"_C_{sources_hash()}*.so"
    else:  # an installed wheel ships no sources: trust the one build it carries
        pattern = "_C_*.so"
    found = sorted(PACKAGE_DIR.glob(pattern))
    return found[0] if found else None


def _clear_stale_lock(directory: Path) -> None:
    """Remove torch's `lock` file when no live process is building.

    torch before 2.14 guards a build with a FileBaton: a `lock` file whose mere existence makes
    every later build wait forever, and a killed build leaves it behind. Callers hold our flock,
    so any builder that left a lock is gone; without flock (no fcntl), a lock older than
    `INCEPTION_FAST_STALE_LOCK_S` (default 300 s) counts as stale. Newer torch holds an OS lock
    on that file instead, which dies with its holder: nothing to clear.
    """
    import torch.utils.cpp_extension as cpp

    lock = directory / "lock"
    if hasattr(cpp, "FileLock") or not lock.exists():
        return
    age = time.time() - lock.stat().st_mtime
    if _flock_supported() or age > float(os.environ.get("INCEPTION_FAST_STALE_LOCK_S", "300")):
        print(f"inception_fast: removing a stale build lock left by a killed build: {lock}", file=sys.stderr)
        lock.unlink(missing_ok=True)


def _flock_supported() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return True


def _build_timeout_s() -> float:
    value = os.environ.get("INCEPTION_FAST_BUILD_TIMEOUT_S")
    try:
        return float(value) if value else BUILD_TIMEOUT_S
    except ValueError:
        raise ExtensionUnavailable(
            f"INCEPTION_FAST_BUILD_TIMEOUT_S must be a number of seconds, got {value!r}"
        ) from None


@contextmanager
def _builder_lock(directory: Path):
    """One builder per build directory: an flock, released by the kernel when its holder dies.
    A waiter gives up after INCEPTION_FAST_BUILD_TIMEOUT_S seconds, naming the holder."""
    from . import cache  # here, not at the top: setup.py loads this file outside the package

    try:
        with cache.file_lock(directory / "builder.flock", _build_timeout_s(), "building the CUDA extension",
                             announce=True):
            yield
    except cache.LockTimeout as err:
        raise ExtensionUnavailable(str(err)) from None


def _up_to_date(directory: Path) -> bool:
    library = directory / f"{EXTENSION_NAME}.so"
    if not library.exists():
        return False
    newest = max((CSRC_DIR / n).stat().st_mtime for n in (*SOURCES, *HEADERS))
    return library.stat().st_mtime >= newest


def _build_stamp() -> str:
    """What a build was made from, besides the sources' contents: the file list and every flag."""
    import torch

    parts = [build_sources(), CXX_FLAGS, NVCC_FLAGS, arch_flags(), cutlass_flags(), torch.__version__]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _load_built(directory: Path) -> Path | None:
    """The library of an earlier build in `directory`, loaded without ninja, when it is newer than
    every source and its stamp matches this build's files and flags (else None: build it).
    Skipping ninja's check and torch.utils.cpp_extension saves most of a second per process."""
    import torch

    library, stamp = directory / f"{EXTENSION_NAME}.so", directory / STAMP_NAME
    if not (_up_to_date(directory) and stamp.is_file() and stamp.read_text() == _build_stamp()):
        return None
    try:
        torch.ops.load_library(str(library))
    except OSError as err:  # damaged: remove it, and the link step runs again
        print(f"inception_fast: the cached CUDA extension {library} does not load ({err}); rebuilding it",
              file=sys.stderr, flush=True)
        library.unlink()
        stamp.unlink(missing_ok=True)
        return None
    return library


def build(directory: Path | None = None, verbose: bool = False) -> Path:
    """Compile csrc/ with ninja (or reuse an up-to-date build) and load it; the library's path."""
    if not CSRC_DIR.is_dir():
        raise ExtensionUnavailable(
            f"the CUDA sources are not installed ({CSRC_DIR} is missing) and no prebuilt extension "
            "matches; reinstall with nvcc present"
        )
    directory = Path(directory) if directory is not None else build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with _builder_lock(directory):
        cached = directory / f"{EXTENSION_NAME}.so"
        if cached.exists() and cached.stat().st_size == 0:  # a link that was interrupted
            cached.unlink()
        loaded = _load_built(directory)
        if loaded is not None:
            return loaded
        _clear_stale_lock(directory)
        import torch.utils.cpp_extension as cpp

        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise ExtensionUnavailable("nvcc was not found (set CUDA_HOME to a CUDA toolkit to build it)")
        # torch reads CUDA_HOME once, at import, and may have guessed a directory without headers.
        os.environ["CUDA_HOME"] = cuda_home
        cpp.CUDA_HOME = cuda_home
        fresh = _up_to_date(directory)
        if not fresh:
            print(f"inception_fast: compiling the CUDA extension in {directory} (first use: about 2 minutes "
                  "on 16 CPUs, 10 on 2)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            library = _compile_and_load(directory, verbose)
        except OSError as err:
            # ninja trusts a library that is newer than its sources, even one that is damaged:
            # remove it, and the link step runs again.
            if not cached.exists():
                raise
            print(f"inception_fast: the cached CUDA extension {cached} does not load ({err}); rebuilding it",
                  file=sys.stderr, flush=True)
            cached.unlink()
            fresh = False
            # torch builds a name once per process unless its sources change: forget this one.
            getattr(getattr(cpp, "JIT_EXTENSION_VERSIONER", None), "entries", {}).pop(EXTENSION_NAME, None)
            library = _compile_and_load(directory, verbose)
        if not fresh:
            print(f"inception_fast: CUDA extension built in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        (directory / STAMP_NAME).write_text(_build_stamp())
    return Path(library)


def _compile_and_load(directory: Path, verbose: bool) -> str:
    import torch.utils.cpp_extension as cpp

    return cpp.load(
        name=EXTENSION_NAME,
        sources=[str(CSRC_DIR / n) for n in build_sources()],
        extra_cflags=[*CXX_FLAGS, *cutlass_flags()],
        extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags(), *cutlass_flags()],
        build_directory=str(directory),
        is_python_module=False,
        verbose=verbose,
    )


def _register_fakes() -> None:
    import torch

    @torch.library.register_fake("inception_fast::cuda_conv_stage")
    def _cuda_conv_stage_fake(input, work, output, problems, weights, bias, col_dst, col_flags):
        return None

    # cuda_gemm_conv1x1 has a Meta kernel in C++ (its argument checks), which FakeTensor uses.


def load() -> Path:
    """Load the extension once per process (prebuilt, else built now); the loaded library's path.

    Raises ExtensionUnavailable with the reason when it cannot be had here.
    """
    if "library" in _state:
        return _state["library"]
    if "error" in _state:
        raise ExtensionUnavailable(_state["error"])
    import torch

    try:
        if torch.version.cuda is None:
            raise ExtensionUnavailable(f"this torch ({torch.__version__}) is built without CUDA")
        library = None
        prebuilt = _prebuilt_library()
        if prebuilt is not None:
            try:
                torch.ops.load_library(str(prebuilt))
                library = prebuilt
            except OSError as err:  # built against another torch: rebuild below
                print(f"inception_fast: the prebuilt extension does not load ({err}); rebuilding",
                      file=sys.stderr)
        if library is None:
            library = build()
        _register_fakes()
    except ExtensionUnavailable as err:
        _state["error"] = str(err)
        raise
    except Exception as err:  # a compile error: keep the compiler's message for `status()`
        _state["error"] = f"building the CUDA extension failed: {err}"
        raise ExtensionUnavailable(_state["error"]) from err
    _state["library"] = library
    return library


def status() -> tuple[bool, str]:
    """(loaded, where from or why not), loading the extension if that has not been tried."""
    try:
        return True, f"loaded from {load()}"
    except ExtensionUnavailable as err:
        return False, str(err)
