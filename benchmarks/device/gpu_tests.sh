#!/usr/bin/env bash
# The GPU test suite (`pytest tests -m cuda`, about 20 minutes on an H100) in three parts; parts 1
# and 3 each fit a 10-minute call. From the repository root:
#
#   OUT=dir PART=1 bash benchmarks/device/gpu_tests.sh      (PART=1, 2, 3 or all)
#
# Part 1: every backend on every Inception-v4 block, the stage ops, the CUTLASS ops and programmatic
# dependent launch, split-K, launch programs (~5 min on an H100).
# Part 2: the stress test, the family, FID, the cuda and auto backends, errors, side streams
# (~10 min on an H100: longer than one call; split it by file).
# Part 3: the per-block persistent kernel and the TMA conv kernel (~5 min).
# WHEELS=dir (default .whl): pytorch-fid and scipy wheels installed offline into a scratch
# directory first (the FID tests compare with pytorch-fid; without it they skip).
# Each part writes OUT/pytest-part<N>.log with one line per test, so a part stopped by its
# limit still shows what passed and what failed.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu_tests_out}
PART=${PART:-all}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

declare -A FILES=(
  [1]="tests/test_gpu_backends.py tests/test_gpu_stage_ops.py tests/test_gpu_bench.py tests/test_gpu_conv_fprop.py
       tests/test_gpu_cuda_gemm.py tests/test_gpu_gemm_conv1x1.py tests/test_gpu_programmatic_launch.py
       tests/test_gpu_split_k.py tests/test_gpu_launch_program.py"
  [2]="tests/test_gpu_stress.py tests/test_gpu_family.py tests/test_fid_features.py tests/test_cuda_backend.py
       tests/test_auto_backend.py tests/test_compile_ahead.py tests/test_errors.py tests/test_triton_backend.py
       tests/test_torch_backend.py tests/test_gpu_folding.py tests/test_side_streams.py"
  [3]="tests/test_gpu_block_kernel.py tests/test_gpu_tma_conv.py"
)
parts=$PART
[ "$PART" = all ] && parts="1 2 3"
for part in $parts; do
  [ -n "${FILES[$part]+set}" ] || { echo "PART=$PART: use 1, 2, 3 or all" >&2; exit 2; }
done

if ls "$WHEELS"/pytorch_fid-*.whl > /dev/null 2>&1; then
  site="$(mktemp -d)"
  pip install -q --no-index --no-deps --target "$site" "$WHEELS"/pytorch_fid-*.whl \
    $(ls "$WHEELS"/scipy-*.whl 2> /dev/null) 2>&1 | grep -v "WARNING: Running pip as" || true
  export PYTHONPATH="$site:$PYTHONPATH"
fi

status=0
for part in $parts; do
  echo "=== part $part ($(date +%T))"
  # shellcheck disable=SC2086 # a list of files
  timeout "${PART_TIMEOUT_S:-560}" python -m pytest -m cuda -v -p no:cacheprovider --tb=short -rf \
    --durations=5 ${FILES[$part]} > "$OUT/pytest-part$part.log" 2>&1
  code=$?
  echo "exit code $code (124: stopped by PART_TIMEOUT_S)"
  grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/pytest-part$part.log" | tail -15
  [ "$code" -eq 0 ] || status=1
done
exit $status
