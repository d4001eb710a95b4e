#!/usr/bin/env bash
# The CUTLASS sm90 ops on a Hopper GPU, the 1x1-conv GEMM and the k x k implicit-GEMM conv, in
# one go (about 5 minutes on an H100):
#   1. the nvidia-cutlass wheel from WHEELS (default .whl; no network needed) unpacked into a
#      scratch directory, for its headers;
#   2. the extension built just in time into a fresh cache directory (MAX_JOBS=16);
#   3. benchmarks/device/wgmma_check.py: correctness against float64 (the 2x rule against cuDNN),
#      then times against the project's Triton and CUDA stage kernels, cuDNN and cuBLAS; with OUT
#      set, OUT/wgmma_check.md and .json;
#   4. the op's GPU tests (tests/test_gpu_gemm_conv1x1.py), on the same build;
#   5. benchmarks/device/conv_fprop_check.py (the k x k conv op against float64 and cuDNN on
#      Inception-v4's k x k convs; OUT/conv_fprop_check.md and .json) and its GPU tests
#      (tests/test_gpu_conv_fprop.py).
# Usage, from the repository root:  OUT=dir bash benchmarks/device/wgmma_check.sh [--skip-timing]
set -u
cd "$(dirname "$0")/../.." || exit 2
PY="${PYTHON:-python3}"
export INCEPTION_FAST_CACHE_DIR="${INCEPTION_FAST_CACHE_DIR:-$(mktemp -d /tmp/inception_fast_wgmma.XXXXXX)}"
export MAX_JOBS=${MAX_JOBS:-16}
[ -n "${OUT:-}" ] && mkdir -p "$OUT"

echo "=== environment ($(date +%T))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# shellcheck source=benchmarks/device/cutlass_site.sh
source benchmarks/device/cutlass_site.sh
"$PY" - <<'PYEOF' || exit 2
import torch
from inception_fast import extension
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("cuda toolkit", extension.find_cuda_home(), "| CUTLASS", extension.cutlass_version(), "at", extension.cutlass_include_dir())
if extension.cutlass_include_dir() is None:
    raise SystemExit("the CUTLASS headers were not found")
PYEOF

echo "=== build ($(date +%T), MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
if ! timeout 600 "$PY" -c "from inception_fast.extension import load; print('loaded', load())" 2>&1 | tee "${OUT:-/tmp}/wgmma_build.log" | tail -5; then
  echo "build: FAILED"; exit 1
fi
grep -q "^loaded" "${OUT:-/tmp}/wgmma_build.log" || { echo "build: FAILED"; tail -60 "${OUT:-/tmp}/wgmma_build.log"; exit 1; }
echo "build: OK in $(( $(date +%s) - start )) s"

echo "=== check ($(date +%T))"
timeout 420 "$PY" benchmarks/device/wgmma_check.py "$@"
status=$?

echo "=== GPU tests ($(date +%T))"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider --tb=short tests/test_gpu_gemm_conv1x1.py 2>&1 | tail -15
test_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$test_status
echo "=== k x k conv op: check and timing ($(date +%T))"
timeout 300 "$PY" benchmarks/device/conv_fprop_check.py
conv_status=$?
[ "$status" -ne 0 ] || status=$conv_status
echo "=== k x k conv op: GPU tests ($(date +%T))"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --tb=short tests/test_gpu_conv_fprop.py 2>&1 | tail -15
test_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$test_status
echo "=== done ($(date +%T)), exit $status"
exit $status
