#!/usr/bin/env bash
# The speed race on one GPU for every network this version's optimize() accepts, from the
# repository root, within about 9 minutes:
#
#   OUT=/some/dir bash benchmarks/device/bench_all.sh
#   OUT=/some/dir MODELS=inception_v4,googlenet bash benchmarks/device/bench_all.sh
#
# Per model of MODELS (default: every model of inception_fast/bench_models.py), one
# `inception-fast bench --model M`: batches 1, 8, 32, 256; the fused default, the fused model
# under a CUDA graph; timm/torchvision eager, eager under a CUDA graph; torch.compile with
# freezing (default from batch 32 up, reduce-overhead up to batch 32; ~40 s of compiling each);
# the cuDNN conv floor per block. A model that optimize() does not accept yet is reported as
# not supported in a few seconds and nothing of it is timed. Then summary.md from the JSON and
# a short table (best fused, the anchor, the conv floor, per model and batch).
#
# Files (at most 8, all directly in $OUT): <model>.json per model, bench_all.log (every table
# and the progress), summary.md. Inception-v4 alone takes about 6 minutes; with more accepted
# models, run them in separate calls (MODELS=...), each within its own ~9 minutes.
# Knobs: MODELS, BATCHES=1,8,32,256, DTYPE (default: each model's own, fp16; fid_inception_v3
# fp32-tf32 as pytorch-fid runs it), COMPILE_ANCHORS=compile-freezing,compile-ro-freezing
# (add `compile` for torch.compile without freezing), DEADLINE_S=540 (the whole script),
# EXTRA="--max-autotune ..." (more `inception-fast bench` options).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The commit travels with the results even where .git was not copied.
export INCEPTION_FAST_COMMIT=${INCEPTION_FAST_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}
MODELS=${MODELS:-$(python -c "from inception_fast.bench_models import MODELS; print(','.join(MODELS))")}
BATCHES=${BATCHES:-1,8,32,256}
COMPILE_ANCHORS=${COMPILE_ANCHORS:-compile-freezing,compile-ro-freezing}
DEADLINE_S=${DEADLINE_S:-540}
REPORT_S=30  # kept for the report at the end
LOG="$OUT/bench_all.log"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
step() { echo; echo "=== [$(elapsed) s] $*"; } >> "$LOG"

: > "$LOG"
step "info"
timeout 60 python -m inception_fast info >> "$LOG" 2>&1

for model in ${MODELS//,/ }; do
  left=$(( DEADLINE_S - REPORT_S - $(elapsed) ))
  if [ "$left" -lt 60 ]; then
    step "$model: skipped, ${left} s left of DEADLINE_S=$DEADLINE_S (run it on its own: MODELS=$model)"
    echo "$model: skipped for time (MODELS=$model runs it)"
    continue
  fi
  step "$model: inception-fast bench, batches $BATCHES, $COMPILE_ANCHORS, at most $left s"
  dtype=()
  [ -n "${DTYPE:-}" ] && dtype=(--dtype "$DTYPE")
  # shellcheck disable=SC2086 # EXTRA is a list of options
  timeout "$left" python -m inception_fast bench --model "$model" ${dtype[@]+"${dtype[@]}"} --batch "$BATCHES" \
    --compile-anchors "$COMPILE_ANCHORS" --budget-ms 500 ${EXTRA:-} --json "$OUT/$model.json" >> "$LOG" 2>&1
  status=$?
  echo "exit code $status (0 ok or not supported, 1 accuracy check failed, 2 usage, 124 time limit)" >> "$LOG"
  echo "[$(elapsed) s] $model: exit code $status"
done

step "report"
echo
echo "=== $(elapsed) s in all; every table is in $LOG, the report in $OUT/summary.md"
python benchmarks/make_report.py --results-dir "$OUT" --out "$OUT" --no-plot --short 2>> "$LOG" \
  || echo "make_report failed: see $LOG"
grep -h "ACCURACY CHECK FAILED" "$LOG" || true
