#!/usr/bin/env bash
# The backends that put 1x1 convs on the CUTLASS GEMM op (`cuda-gemm`, `triton-gemm`) on a Hopper
# GPU, in one go (about 9 minutes on an H100, no network):
#   1. the nvidia-cutlass wheel from WHEELS (default .whl) unpacked into a scratch directory, for
#      its headers;
#   2. the extension built just in time into a fresh cache directory (MAX_JOBS=16);
#   3. both backends' GPU tests (tests/test_gpu_cuda_gemm.py: every distinct block of the four
#      family networks in fp16 and bf16, the whole model plain, under a CUDA graph and
#      torch.compile, inside `auto`; their CPU tests run anywhere);
#   4. Inception-v4 at batch 1, 8, 32, 256 on `--backend` cuda-gemm, cuda, triton-gemm and
#      triton, each against the stage kernel alone (no torch.compile anchors, no floor):
#      OUT/v4-<backend>.json, every table in OUT/v4-bench.log.
# Logs: OUT/cuda_gemm_build.log, OUT/cuda_gemm_tests.log, OUT/v4-bench.log (7 files in all).
# Each step gets what is left of DEADLINE_S (default 540) and is cut off past it.
# Usage, from the repository root:  OUT=dir bash benchmarks/device/cuda_gemm_check.sh
set -u
cd "$(dirname "$0")/../.." || exit 2
PY="${PYTHON:-python3}"
OUT=${OUT:-$PWD/cuda_gemm_out}
mkdir -p "$OUT"
export INCEPTION_FAST_CACHE_DIR="${INCEPTION_FAST_CACHE_DIR:-$(mktemp -d /tmp/inception_fast_cuda_gemm.XXXXXX)}"
export INCEPTION_FAST_COMMIT=${INCEPTION_FAST_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}
export MAX_JOBS=${MAX_JOBS:-16}
DEADLINE_S=${DEADLINE_S:-540}
START=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
status=0

echo "=== environment ($(date +%T))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# shellcheck source=benchmarks/device/cutlass_site.sh
source benchmarks/device/cutlass_site.sh
"$PY" - <<'PYEOF' || exit 2
from inception_fast import extension
print("CUTLASS", extension.cutlass_version(), "at", extension.cutlass_include_dir())
if extension.cutlass_include_dir() is None:
    raise SystemExit("the CUTLASS headers were not found")
PYEOF

echo "=== build ($(date +%T), MAX_JOBS=$MAX_JOBS)"
timeout "$(left)" "$PY" -c "from inception_fast.extension import load; print('loaded', load())" \
  > "$OUT/cuda_gemm_build.log" 2>&1
grep -q "^loaded" "$OUT/cuda_gemm_build.log" || { echo "build: FAILED"; tail -40 "$OUT/cuda_gemm_build.log"; exit 1; }
"$PY" -c "from inception_fast.backends import backend_status as s; [print(b + ':', *s(b, 'cuda')) for b in ('cuda-gemm', 'triton-gemm')]"
echo "build: OK at $(( $(date +%s) - START )) s"

echo "=== tests ($(date +%T))"
# One line per test, so a run stopped by its limit still shows what passed.
timeout "$(( $(left) < 270 ? $(left) : 270 ))" "$PY" -m pytest -v -rf --durations=5 -p no:cacheprovider --tb=short \
  tests/test_gpu_cuda_gemm.py > "$OUT/cuda_gemm_tests.log" 2>&1
test_status=$?
grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/cuda_gemm_tests.log" | tail -15
echo "tests: exit $test_status"
[ "$test_status" -eq 0 ] || status=1

for backend in cuda-gemm cuda triton-gemm triton; do
  budget=$(left)
  if [ "$budget" -lt 45 ]; then
    echo "=== bench --backend $backend: skipped, ${budget} s left of DEADLINE_S=$DEADLINE_S"; status=1; continue
  fi
  echo "=== bench --backend $backend ($(date +%T), at most $budget s)" | tee -a "$OUT/v4-bench.log"
  # Tile configs: shipped ones where they exist; the stages a split leaves (triton-gemm) have
  # none, so they are timed on first use rather than left to the heuristic.
  INCEPTION_FAST_AUTOTUNE=1 timeout "$budget" "$PY" -m inception_fast bench --model inception_v4 \
    --batch 1,8,32,256 --backend "$backend" --no-compile --no-floor --budget-ms 400 \
    --json "$OUT/v4-$backend.json" > "$OUT/v4-$backend.log" 2>&1
  bench_status=$?
  grep -E "^(configuration|fused)" "$OUT/v4-$backend.log" | cut -c1-110
  cat "$OUT/v4-$backend.log" >> "$OUT/v4-bench.log" && rm -f "$OUT/v4-$backend.log"  # at most 8 files come back
  echo "bench --backend $backend: exit $bench_status (0 ok, 1 accuracy check failed, 124 time limit)"
  [ "$bench_status" -eq 0 ] || status=1
done
echo "=== done ($(date +%T), $(( $(date +%s) - START )) s), exit $status"
exit $status
