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
GEMM_SCHEMA = (
    "inception_fast::cuda_gemm_conv1x1(Tensor x, Tensor weight, Tensor bias, Tensor(a!) out, int col_offset, "
    "bool relu, int tile_n=0, bool tf32=False, int sm_limit=0, int split_k=0, int tile_m=0) -> ()"
)
CONV_SCHEMA = (
    "inception_fast::cuda_conv_fprop(Tensor x, Tensor weight, Tensor bias, Tensor(a!) out, int in_c0, "
    "int out_c0, int stride, int pad_h, int pad_w, bool relu, int tile_n=0, bool tf32=False, "
    "int sm_limit=0, int tile_m=0, int split_k=0) -> ()"
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
        print("GEMM_SCHEMA", torch.ops.inception_fast.cuda_gemm_conv1x1.default._schema)
        print("CONV_SCHEMA", torch.ops.inception_fast.cuda_conv_fprop.default._schema)
        import sys
        print("NINJA_CHECKED", "torch.utils.cpp_extension" in sys.modules)
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
    assert f"GEMM_SCHEMA {GEMM_SCHEMA}" in done.stdout
    assert f"CONV_SCHEMA {CONV_SCHEMA}" in done.stdout
    # ptxas reports serialized WGMMA (C7510, e.g. a device assert() in CUTLASS) as "info", not
    # as a warning: it costs the CUTLASS kernels most of their speed, so it counts here too.
    compiler_warnings = [line for line in log.splitlines()
                         if "warning:" in line or "warning #" in line or "C7510" in line]
    assert not compiler_warnings, "\n".join(compiler_warnings)
    library = Path(done.stdout.split("LIBRARY ")[1].split()[0])
    assert library.exists()

    # A later process loads the up-to-date build directly: no ninja run, no cpp_extension import.
    again = _build_in_a_child(tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert f"SCHEMA {SCHEMA}" in again.stdout and "NINJA_CHECKED False" in again.stdout
    # Other flags (here: another file list) make it build again, through ninja.
    stamp = tmp_path / extension.STAMP_NAME
    stamp.write_text("a build with other flags")
    again = _build_in_a_child(tmp_path)
    log = (again.stdout + again.stderr)[-6000:]
    assert again.returncode == 0 and "NINJA_CHECKED True" in again.stdout, log
    assert stamp.read_text() != "a build with other flags"

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


@needs_nvcc
def test_gemm_conv1x1_checks_its_arguments_without_a_gpu():
    """The op's Meta kernel runs its argument checks: meta tensors and FakeTensor (torch.compile's
    tracing) see a bad call fail, naming the argument, with or without the CUTLASS headers."""
    extension.load()
    op = torch.ops.inception_fast.cuda_gemm_conv1x1.default
    assert str(op._schema) == GEMM_SCHEMA

    def tensors(device="meta", **changes):
        half = torch.float16
        shapes = {"x": ((3, 5, 5, 64), half), "weight": ((32, 64), half), "bias": ((32,), torch.float32),
                  "out": ((3, 5, 5, 48), half)}
        shapes.update(changes)
        return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes.values()]

    assert op(*tensors(), 8, True) is None  # channels [8, 40) of 48
    assert op(*tensors(), 16, False, 256) is None
    half, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    bad = [
        ({"x": ((3, 5, 5, 64), torch.float64)}, 8, 0, "x must be float16, bfloat16 or float32"),
        ({"x": ((3, 5, 5, 64), f32)}, 8, 0, "float32 runs on TF32 tensor cores only .* pass tf32=True"),
        ({"x": ((3, 5, 5, 60), half), "weight": ((32, 60), half)}, 8, 0, "x has 60 channels"),
        ({"weight": ((32, 32), half)}, 8, 0, r"weight must be a contiguous \[Cout, Cin\]"),
        ({"weight": ((32, 64), bf16)}, 8, 0, "weight is BFloat16"),
        ({"weight": ((30, 64), half), "bias": ((30,), f32)}, 8, 0, "weight has 30 output channels"),
        ({"bias": ((32,), half)}, 8, 0, "bias must be float32"),
        ({"bias": ((16,), f32)}, 8, 0, "bias must be a contiguous 1-D tensor of 32 entries"),
        ({"out": ((3, 5, 5, 48), bf16)}, 8, 0, "out is BFloat16"),
        ({"out": ((3, 5, 4, 48), half)}, 8, 0, "out must be contiguous with x's pixels"),
        ({"out": ((3, 5, 5, 44), half)}, 8, 0, "out has 44 channels"),
        ({}, 4, 0, "col_offset 4 must be a multiple of 8"),
        ({}, 24, 0, "col_offset 24 must be .* within out's 48"),
        ({}, 8, 96, "tile_n must be 0"),
    ]
    for changes, col_offset, tile_n, message in bad:
        with pytest.raises(RuntimeError, match=message):
            op(*tensors(**changes), col_offset, True, tile_n)
    tf32 = {name: (shape, f32 if dtype == half else dtype) for name, (shape, dtype) in
            {"x": ((3, 5, 5, 64), half), "weight": ((32, 64), half), "out": ((3, 5, 5, 48), half)}.items()}
    assert op(*tensors(**tf32), 8, True, 0, True) is None  # fp32 on TF32, asked for
    with pytest.raises(RuntimeError, match="tf32=True is for float32 inputs"):
        op(*tensors(), 8, True, 0, True)
    # tile_m (after split_k): 0 (the op's), 64 (64 x 64 tiles, fp16 and bf16) or 128.
    for tile_n, tile_m in ((64, 64), (0, 64), (256, 128), (0, 128)):
        assert op(*tensors(), 8, True, tile_n, False, 0, 0, tile_m) is None
    with pytest.raises(RuntimeError, match=r"tile_m must be 0 \(chosen per problem\), 64 or 128, got 256"):
        op(*tensors(), 8, True, 0, False, 0, 0, 256)
    narrow_rows = "64-row tiles are built 64 wide for fp16 and bf16"
    with pytest.raises(RuntimeError, match=f"{narrow_rows}; got tile_n 128"):
        op(*tensors(), 8, True, 128, False, 0, 0, 64)
    with pytest.raises(RuntimeError, match=rf"{narrow_rows}; got tile_n 0 \(Float\)"):
        op(*tensors(**tf32), 8, True, 0, True, 0, 0, 64)
    split_k_tiles = "split-K is built for fp16 and bf16 in 128 x 64 tiles; got "
    with pytest.raises(RuntimeError, match=split_k_tiles + "Half with tile_m 64, tile_n 0"):
        op(*tensors(), 8, True, 0, False, 0, 2, 64)

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert op(*tensors("cuda"), 8, True) is None
        with pytest.raises(RuntimeError, match="col_offset 4"):
            op(*tensors("cuda"), 4, True)


@needs_nvcc
def test_launch_program_checks_its_rows_without_a_gpu():
    """torch.classes.inception_fast.LaunchProgram (csrc/launch_program.cpp) refuses rows it could
    not issue, naming what is wrong, and buffers that are not CUDA tensors; it runs on a GPU in
    tests/test_gpu_launch_program.py."""
    extension.load()
    program = torch.classes.inception_fast.LaunchProgram()
    weight, bias = torch.empty(16, 8, dtype=torch.float16), torch.empty(16)
    with pytest.raises(RuntimeError, match=r"writes the work \(1\) or output \(2\) buffer, not the input"):
        program.add_gemm(1, 0, weight, bias, 0, True, 0, False, 0, 0)
    with pytest.raises(RuntimeError, match="reads buffer 3"):
        program.add_conv(3, 1, weight.view(16, 1, 1, 8), bias, 0, 0, 1, 0, 0, True, 0, False, 0, 0)
    with pytest.raises(RuntimeError, match="parameter 1 is of kind 7"):
        program.add_triton(1, [1, 1, 1], 128, 0, True, [0, 7], [0, 0], [])
    with pytest.raises(RuntimeError, match="passes buffer 5"):
        program.add_triton(1, [1, 1, 1], 128, 0, True, [0], [5], [])
    with pytest.raises(RuntimeError, match="2 kinds and 1 values"):
        program.add_triton(1, [1, 1, 1], 128, 0, True, [2, 2], [1], [])
    program.add_gemm(0, 2, weight, bias, 0, True, 0, False, 0, 0)
    program.add_triton(1, [4, 1, 1], 128, 1024, True, [0, 2, 1], [2, 7, 1 << 40], [bias])
    assert program.size() == 2
    with pytest.raises(RuntimeError, match="set_buffers first"):
        program.call(torch.empty(1, 8, 2, 2))
    with pytest.raises(RuntimeError, match="buffer 0 must be a 4-d CUDA tensor"):
        program.run(*(torch.empty(1, 8, 2, 2) for _ in range(3)))


@needs_nvcc
def test_conv_fprop_checks_its_arguments_without_a_gpu():
    """The k x k conv op's Meta kernel runs its argument checks (channel slices, sizes, alignment)."""
    extension.load()
    op = torch.ops.inception_fast.cuda_conv_fprop.default
    assert str(op._schema) == CONV_SCHEMA

    def tensors(device="meta", **changes):
        half = torch.float16
        shapes = {"x": ((3, 9, 7, 64), half), "weight": ((32, 3, 3, 16), half),
                  "bias": ((32,), torch.float32), "out": ((3, 9, 7, 48), half)}
        shapes.update(changes)
        return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes.values()]

    assert op(*tensors(), 8, 16, 1, 1, 1, True) is None  # x[..., 8:24] -> out[..., 16:48], 3x3 pad 1
    assert op(*tensors(out=((3, 4, 3, 32), torch.float16)), 0, 0, 2, 0, 0, False) is None  # 3x3 stride 2
    seven = {"weight": ((32, 1, 7, 16), torch.float16)}
    assert op(*tensors(**seven), 48, 0, 1, 0, 3, True) is None  # 1x7, padding (0, 3)
    half, f32 = torch.float16, torch.float32
    bad = [
        ({"x": ((3, 9, 7, 64), f32)}, (8, 16, 1, 1, 1), "float32 runs on TF32 tensor cores only"),
        ({"weight": ((32, 3, 3, 12), half)}, (8, 16, 1, 1, 1), "12 input and 32 output channels"),
        ({"bias": ((16,), f32)}, (8, 16, 1, 1, 1), "bias must be a contiguous float32 tensor of 32"),
        ({}, (4, 16, 1, 1, 1), "in_c0 4 must be a multiple of 8"),
        ({}, (56, 16, 1, 1, 1), "in_c0 56 must be .* within x's 64"),
        ({}, (8, 24, 1, 1, 1), "out_c0 24 must be .* within out's 48"),
        ({}, (8, 16, 1, 3, 1), r"padding \(3, 1\) must be"),
        ({}, (8, 16, 2, 1, 1), r"out must be \[3, 5, 4, C\]"),
        ({"out": ((3, 9, 7, 44), half)}, (8, 0, 1, 1, 1), "out 44 channels"),
    ]
    for changes, args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            op(*tensors(**changes), *args, True)
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 64) is None  # the tile widths it is built for
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 96) is None
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 128) is None
    with pytest.raises(RuntimeError, match=r"tile_n must be 0 \(chosen per problem\), 64, 96 or 128, got 2"):
        op(*tensors(), 8, 16, 1, 1, 1, True, 2)
    tf32 = [torch.empty(t.shape, dtype=torch.float32 if t.dtype == half else t.dtype, device="meta")
            for t in tensors()]
    assert op(*tf32, 8, 16, 1, 1, 1, True, 0, True) is None  # fp32 on TF32, asked for
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 128, False, 0, 256) is None  # 256-row tiles, fp16
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 96, False, 0, 256) is None
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 0, False, 0, 128) is None
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 64, False, 0, 64) is None  # 64 x 64 tiles, fp16
    assert op(*tensors(), 8, 16, 1, 1, 1, True, 0, False, 0, 64) is None
    tile_m_choices = r"tile_m must be 0 \(chosen per problem\), 64, 128 or 256"
    with pytest.raises(RuntimeError, match=f"{tile_m_choices}, got 32"):
        op(*tensors(), 8, 16, 1, 1, 1, True, 0, False, 0, 32)
    narrow_rows = "64-row tiles are built 64 wide for fp16 and bf16"
    with pytest.raises(RuntimeError, match=f"{narrow_rows}; got tile_n 128"):
        op(*tensors(), 8, 16, 1, 1, 1, True, 128, False, 0, 64)
    with pytest.raises(RuntimeError, match=rf"{narrow_rows}; got tile_n 64 \(Float\)"):
        op(*tf32, 8, 16, 1, 1, 1, True, 64, True, 0, 64)
    wide_rows = "256-row tiles are built 96 or 128 wide for fp16 and bf16"
    with pytest.raises(RuntimeError, match=f"{wide_rows}; got tile_n 64"):
        op(*tensors(), 8, 16, 1, 1, 1, True, 64, False, 0, 256)
    with pytest.raises(RuntimeError, match=r"256-row tiles are built 96 .* got tile_n 128 \(Float\)"):
        op(*tf32, 8, 16, 1, 1, 1, True, 128, True, 0, 256)
    # split_k: 0 or 1 (none), 2 to 8 ranges in 128 x 64 tiles of fp16 or bf16.
    for split_k, tiles in ((0, (0, 0)), (1, (128, 256)), (4, (0, 0)), (8, (64, 128))):
        assert op(*tensors(), 8, 16, 1, 1, 1, True, tiles[0], False, 0, tiles[1], split_k) is None
    split_k_range = r"split_k must be 0 or 1 \(no split\) or 2 to 8"
    with pytest.raises(RuntimeError, match=split_k_range):
        op(*tensors(), 8, 16, 1, 1, 1, True, 0, False, 0, 0, 9)
    split_k_tiles = r"split-K is built for fp16 and bf16 in 128 x 64 tiles; got "
    with pytest.raises(RuntimeError, match=split_k_tiles + "Half with tile_m 0, tile_n 96"):
        op(*tensors(), 8, 16, 1, 1, 1, True, 96, False, 0, 0, 2)
    with pytest.raises(RuntimeError, match=split_k_tiles + "Float with tile_m 0, tile_n 0"):
        op(*tf32, 8, 16, 1, 1, 1, True, 0, True, 0, 0, 2)


def test_cutlass_headers_come_from_the_variable_or_the_wheel_and_name_the_build(monkeypatch, tmp_path):
    """Without CUTLASS headers the extension builds without its files; with them it compiles them
    too, and the sources hash and build directory change (no build of the other kind is reused)."""
    assert set(extension.CUTLASS_SOURCES) <= set(extension.SOURCES)
    assert {"gemm_conv1x1_fp16.cu", "conv_fprop_bf16.cu"} <= set(extension.CUTLASS_SOURCES)
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("INCEPTION_FAST_CUTLASS_DIR", str(tmp_path / "cutlass"))
    assert extension.cutlass_include_dir() is None and extension.cutlass_flags() == []
    assert not set(extension.build_sources()) & set(extension.CUTLASS_SOURCES)
    hash_without, directory_without = extension.sources_hash(), extension.build_directory()

    include = tmp_path / "cutlass" / "include"
    (include / "cutlass").mkdir(parents=True)
    (include / "cute").mkdir()
    (include / "cute" / "tensor.hpp").write_text("")
    (include / "cutlass" / "cutlass.h").write_text("")
    (include / "cutlass" / "version.h").write_text(
        "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 0\n")
    assert extension.cutlass_include_dir() == include.resolve()
    assert extension.cutlass_version() == "4.2.0"
    assert extension.cutlass_flags() == [f"-I{include.resolve()}", "-DINCEPTION_FAST_WITH_CUTLASS=1",
                                         "-DCUTLASS_ENABLE_GDC_FOR_SM90=1"]
    assert extension.build_sources() == list(extension.SOURCES)
    # The conv kernels also need the util headers beside include/ (a checkout's layout, the wheel's).
    util = tmp_path / "cutlass" / "tools" / "util" / "include"
    (util / "cutlass" / "util").mkdir(parents=True)
    (util / "cutlass" / "util" / "packed_stride.hpp").write_text("")
    assert extension.cutlass_flags()[3:] == [f"-I{util.resolve()}", "-DINCEPTION_FAST_WITH_CUTLASS_CONV=1"]
    assert extension.sources_hash() != hash_without
    assert extension.build_directory() != directory_without


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


def test_every_csrc_file_is_a_listed_source_or_header():
    # An unlisted header would leave the sources hash and the build stamp blind to its edits.
    on_disk = {path.name for path in extension.CSRC_DIR.iterdir() if path.is_file()}
    assert on_disk == {*extension.SOURCES, *extension.HEADERS}


def test_build_cache_is_per_torch_and_cuda_version(monkeypatch, tmp_path):
    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path))
    directory = extension.build_directory()
    assert directory.parent == tmp_path / "build"
    assert torch.__version__.replace("+", "_") in directory.name
    assert f"cuda{torch.version.cuda}" in directory.name


def test_the_sources_build_messages_without_iostreams():
    """c10::str (iostream number formatting) crashed the process inside this library with torch
    2.11's wheels instead of raising, even on the success path where a message is built eagerly
    (check_text.h); every check goes through OP_CHECK, whose messages are joined with join_text
    only when the check fails. The crash shows only on a GPU machine, so it is guarded here."""
    csrc = Path(extension.__file__).resolve().parents[1] / "csrc"
    sources = [p for p in csrc.iterdir()
               if p.suffix in {".cpp", ".cu", ".h", ".cuh"} and p.name != "check_text.h"]
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        for banned in ("c10::str(", "TORCH_CHECK(", "std::ostringstream", "std::stringstream"):
            assert banned not in text, f"{path.name} uses {banned}; use OP_CHECK (check_text.h)"
