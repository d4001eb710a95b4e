"""The CUTLASS ops' tile rules (csrc/conv_fprop.h, csrc/gemm_conv1x1.h), compiled on the host:
64 x 64 tiles exactly where they fit one wave of the SMs, in fp16 / bf16 only, the older model
elsewhere. Needs a C++ compiler and the CUDA headers (the extension's build needs both)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from inception_fast import extension

CSRC = Path(extension.__file__).resolve().parents[1] / "csrc"
SMS = 132  # an H100's or H200's SMs
PROGRAM = """
#include <cstdio>
#include "conv_fprop.h"
int main() {
  using namespace inception_fast;
  long m, n;
  int stride, sixteen_bit;
  while (std::scanf("%ld %ld %d %d", &m, &n, &stride, &sixteen_bit) == 4) {
    const ConvTile conv = conv_fprop_tile(m, n, stride, SMS, sixteen_bit != 0);
    std::printf("%d %d %d\\n", conv.m, conv.n, gemm_conv1x1_tile_m(m, n, SMS, sixteen_bit != 0));
  }
}
"""
# Inception-v4's k x k convs at batch 1 and 8 ((m, n, stride) at batch 1): the 16 of
# benchmarks/device/conv_fprop_check.py.
CONVS = [(145 * 145, 32, 1), (147 * 147, 64, 1), (73 * 73, 96, 2), (71 * 71, 96, 1), (73 * 73, 64, 1),
         (73 * 73, 64, 1), (35 * 35, 192, 2), (35 * 35, 96, 1), (35 * 35, 96, 1), (17 * 17, 384, 2),
         (35 * 35, 224, 1), (17 * 17, 224, 1), (17 * 17, 256, 1), (8 * 8, 192, 2), (8 * 8, 256, 1),
         (8 * 8, 512, 1)]


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    compiler, cuda_home = shutil.which("g++") or shutil.which("c++"), extension.find_cuda_home()
    if compiler is None or cuda_home is None:
        pytest.skip("needs a C++ compiler and the CUDA headers")
    source = tmp_path_factory.mktemp("rules") / "rules.cpp"
    source.write_text(PROGRAM)
    binary = source.with_suffix("")
    flags = ["-std=c++17", f"-DSMS={SMS}", f"-I{CSRC}", f"-I{cuda_home}/include"]
    subprocess.run([compiler, *flags, str(source), "-o", str(binary)], check=True)

    def run(cases):
        text = "".join(f"{m} {n} {stride} {int(sixteen_bit)}\n" for m, n, stride, sixteen_bit in cases)
        out = subprocess.run([str(binary)], input=text, capture_output=True, text=True, check=True).stdout
        return [tuple(map(int, line.split())) for line in out.splitlines()]

    return run


def _fits_one_wave(m: int, n: int) -> bool:
    return -(-m // 64) * -(-n // 64) <= SMS


def test_64x64_tiles_exactly_where_they_fit_one_wave_in_16_bit(rules):
    cases = [(m * batch, n, stride, True) for batch in (1, 8) for m, n, stride in CONVS]
    got = rules(cases)
    fits = [_fits_one_wave(m, n) for m, n, _, _ in cases]
    assert sum(fits) == 15  # the split the measurements drew the line at
    for (m, n, stride, _), fit, (conv_m, conv_n, gemm_m) in zip(cases, fits, got):
        assert ((conv_m, conv_n) == (64, 64)) == fit, (m, n, stride)
        assert (gemm_m == 64) == fit, (m, n)
        if not fit:  # the older model: 128 rows (256 for some stride-1 convs), 64 to 128 wide
            assert conv_m in (128, 256) and conv_n in (64, 96, 128) and gemm_m == 128


def test_no_64_row_tiles_in_tf32(rules):
    got = rules([(m, n, stride, False) for m, n, stride in CONVS])
    assert all(conv_m == 128 and gemm_m == 128 for conv_m, _, gemm_m in got)
