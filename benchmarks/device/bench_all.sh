#!/usr/bin/env bash
# The whole speed race on one GPU, in about 8 minutes, from the repository root:
#
#   OUT=/some/dir bash benchmarks/device/bench_all.sh
#
# 1. `inception-fast info`                       (versions, usable backends, auto choice)
# 2. this card's peaks (matmul TFLOP/s, copy TB/s) for the floors
# 3. `inception-fast bench`, fp16, batches 1/32/256, fused vs timm eager / CUDA graph / torch.compile
# 4. `pytest benchmarks/`, short: fp16, batch 256, no torch.compile (blocks and whole model)
# 5. time to first inference in fresh processes, cold and warm caches, fused and torch.compile
# 6. summary.md + images_per_s-<card>.png from the JSON, and the compact table printed last
#
# Everything lands in $OUT (JSON, logs, PNG). Copy $OUT/*.json to benchmarks/results/ and run
# `python benchmarks/make_report.py --readme benchmarks/README.md` to update the README.
# Knobs: SKIP_PYTEST=1, SKIP_TTFI=1, MAX_AUTOTUNE=1 (adds ~5 min per shape), BATCHES=1,32,256,
# DTYPE=fp16, PYTEST_BATCHES=256.
# Each step has its own time limit so that one slow step cannot eat the others' time.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The commit travels with the results even where .git was not copied.
export INCEPTION_FAST_COMMIT=${INCEPTION_FAST_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}
BATCHES=${BATCHES:-1,32,256}
DTYPE=${DTYPE:-fp16}
EXTRA=()
[ "${MAX_AUTOTUNE:-0}" = 1 ] && EXTRA+=(--max-autotune)
START=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - START )) s] $*"; }

step "info"
timeout 60 python -m inception_fast info 2>&1 | tee "$OUT/info.txt"

step "peaks of this card"
timeout 90 python benchmarks/floors.py --measure --json "$OUT/peaks.json" > "$OUT/floors.md" 2> "$OUT/peaks.log" \
  && cat "$OUT/peaks.json" || echo "peaks: failed (see $OUT/peaks.log); the report uses the default peaks"

step "inception-fast bench, $DTYPE, batches $BATCHES, with anchors"
timeout 240 python -m inception_fast bench --dtype "$DTYPE" --batch "$BATCHES" --budget-ms 500 "${EXTRA[@]}" \
  --json "$OUT/bench-$DTYPE.json" > "$OUT/bench-$DTYPE.txt" 2> "$OUT/bench-$DTYPE.log"
echo "exit code $? (0 ok, 1 accuracy check failed, 124 time limit)"
cat "$OUT/bench-$DTYPE.txt"; tail -3 "$OUT/bench-$DTYPE.log"

if [ "${SKIP_PYTEST:-0}" != 1 ]; then
  step "pytest benchmarks/ ($DTYPE, batch ${PYTEST_BATCHES:-256}, no torch.compile)"
  timeout 120 python -m pytest benchmarks/ -q -p no:cacheprovider --bench-dtypes "$DTYPE" --bench-batches "${PYTEST_BATCHES:-256}" \
    --no-compile --bench-budget-ms 300 -k "not first_inference" --results-dir "$OUT" > "$OUT/pytest.log" 2>&1
  echo "exit code $?"
  grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3
fi

if [ "${SKIP_TTFI:-0}" != 1 ]; then
  step "time to first inference (fresh processes; cold = empty caches, warm = same caches)"
  timeout 200 python -m inception_fast ttfi --dtype "$DTYPE" --timeout 150 "${EXTRA[@]}" \
    --json "$OUT/ttfi.json" 2> "$OUT/ttfi.log"
  echo "exit code $?"
fi

step "report"
python benchmarks/make_report.py --results-dir "$OUT" --out "$OUT" --dtype "$DTYPE" --block-batch "${PYTEST_BATCHES:-256}" > "$OUT/report.txt" 2>&1 || tail -5 "$OUT/report.txt"
ls -la "$OUT"
echo
echo "=== compact summary ($(( $(date +%s) - START )) s in all)"
# The whole-model table, the target verdicts and first inference; the block table is in summary.md.
sed -n '/^### Whole model/,/^### Blocks/p' "$OUT/summary.md" 2>/dev/null | grep -v '^### Blocks' \
  || cat "$OUT/bench-$DTYPE.txt"
