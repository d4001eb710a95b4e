"""Build of inception-fast: the Python package, and the C++/CUDA extension where nvcc is present.

Switches (environment variables):
  INCEPTION_FAST_SKIP_CUDA_BUILD=1  do not build the extension now (it is built at first use)
  INCEPTION_FAST_FORCE_BUILD=1      the extension must build: no nvcc or a compile error fails
  INCEPTION_FAST_CUDA_ARCH_LIST     e.g. "9.0a;8.0+PTX" (else TORCH_CUDA_ARCH_LIST, else sm_90a
                                    SASS plus compute_80 PTX)
  INCEPTION_FAST_CUTLASS_DIR        CUTLASS headers for the sm90 GEMM op (else the nvidia-cutlass
                                    wheel's, if installed; without either that op is left out)
  MAX_JOBS                          parallel ninja jobs (default: all cores)

Use `pip install --no-build-isolation -e .` so the build sees the installed torch. Without a
build here, `inception_fast.extension.load()` compiles the same sources at first use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _version() -> str:
    text = (ROOT / "inception_fast" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _extension_helpers():
    """inception_fast/extension.py, loaded by path: the package itself is not importable yet."""
    path = ROOT / "inception_fast" / "extension.py"
    spec = importlib.util.spec_from_file_location("_inception_fast_extension", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _note(message: str) -> None:
    print(f"inception_fast setup: {message}", file=sys.stderr)


def _cuda_build():
    """(ext_modules, cmdclass) for the CUDA extension, or ([], {}) when it is not built now."""
    force = _flag("INCEPTION_FAST_FORCE_BUILD")
    if _flag("INCEPTION_FAST_SKIP_CUDA_BUILD") and not force:
        _note("INCEPTION_FAST_SKIP_CUDA_BUILD is set: the CUDA extension will be built at first use")
        return [], {}
    helpers = _extension_helpers()
    cuda_home = helpers.find_cuda_home()
    if cuda_home is None:
        if force:
            raise RuntimeError("INCEPTION_FAST_FORCE_BUILD is set but nvcc was not found (set CUDA_HOME)")
        _note("nvcc not found: skipping the CUDA extension (backend 'cuda' will build it at first use)")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home  # before torch guesses a toolkit root from PATH
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as err:
        if force:
            raise
        _note(f"torch is not importable ({err}); use --no-build-isolation. Skipping the CUDA extension")
        return [], {}
    if torch.version.cuda is None:  # a CPU-only torch: CUDAExtension itself would fail
        message = (f"torch {torch.__version__} is built without CUDA: the CUDA extension was skipped "
                   "(the CPU runs the 'torch' backend; GPU backends need a CUDA build of torch)")
        if force:
            raise RuntimeError(f"INCEPTION_FAST_FORCE_BUILD is set but {message}")
        _note(message)
        return [], {}

    class BuildCudaExtension(BuildExtension):
        """A failed compile leaves the package installable (the extension is then built at first
        use) unless INCEPTION_FAST_FORCE_BUILD is set."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:
                if force:
                    raise
                _note(f"the CUDA extension did not build ({err}); it will be built at first use")

    try:  # CUDAExtension looks for the toolkit's libraries and raises OSError without them
        extension = CUDAExtension(
            name=f"inception_fast._C_{helpers.sources_hash()}",
            sources=[f"csrc/{name}" for name in helpers.build_sources()],
            extra_compile_args={
                "cxx": [*helpers.CXX_FLAGS, *helpers.cutlass_flags()],
                "nvcc": [*helpers.NVCC_FLAGS, *helpers.arch_flags(), *helpers.cutlass_flags()],
            },
        )
    except (OSError, RuntimeError, ValueError) as err:
        if force:
            raise
        _note(f"the CUDA extension cannot be set up here ({err}): skipped; it will be built at first use")
        return [], {}
    return [extension], {"build_ext": BuildCudaExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_build()

setup(
    name="inception-fast",
    version=_version(),
    description="Fused Inception-v4 inference: one kernel launch per block stage (Triton or CUDA)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["inception_fast", "inception_fast.*"]),
    package_data={
        "inception_fast.kernels.triton": ["tuned_configs.json"],
        "inception_fast.backends": ["shipped_choices.json"],
    },
    install_requires=["torch", "timm", "safetensors"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytorch-fid"],
        "fid": ["torchvision", "scipy", "pillow"],
    },
    entry_points={"console_scripts": ["inception-fast=inception_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
