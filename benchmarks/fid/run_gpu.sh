#!/usr/bin/env bash
# The FID measurements on a GPU machine, from the repository root, each step with its own limit:
#
#   OUT=dir PHOTOS=path/to/scikit_image-*.whl bash benchmarks/fid/run_gpu.sh [steps]
#
# steps (default "tests compare decode precision"):
#   tests      the GPU tests of inception_fast.fid (pytest -m cuda)
#   compare    end to end, COUNT 256x256 + COUNT 512x512 JPEGs: pytorch-fid's command against
#              `inception-fast fid` (1 GPU; with GPUS=1,2 also torchrun on 2 GPUs)   ~4-5 min
#   decode     nvJPEG against PIL on JPEGs of real photographs (needs PHOTOS)         ~1-2 min
#   precision  fp16/bf16 against fp32 FID on real photographs (needs PHOTOS)         ~2-3 min
#
# Knobs: COUNT (default 25000 per folder), GPUS (default 1), CPUS_PER_GPU (restrict each run's
# CPUs, e.g. 16 to stand for the 16-core one-GPU machine on a bigger host), WEIGHTS (pytorch-fid's
# checkpoint; default random weights in its format), DATA (where the JPEGs are made once);
# for a short check: ONLY (run only the configurations whose name contains it, e.g. "fp32, eigh"
# for one and two GPUs), WARM_UP=0 (no untimed first runs), SKIP_PYTORCH_FID=1.
#   COUNT=1500 GPUS=1,2 ONLY="fp32, eigh" WARM_UP=0 SKIP_PYTORCH_FID=1 bash benchmarks/fid/run_gpu.sh compare
# Needs scipy and pytorch-fid importable (pip install --no-deps their wheels where offline).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/fid_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export INCEPTION_FAST_COMMIT=${INCEPTION_FAST_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}
STEPS=${*:-tests compare decode precision}
COUNT=${COUNT:-25000}
GPUS=${GPUS:-1}
DATA=${DATA:-/tmp/inception_fast_fid_data}
EXTRA=()
[ -n "${CPUS_PER_GPU:-}" ] && EXTRA+=(--cpus-per-gpu "$CPUS_PER_GPU")
[ -n "${WEIGHTS:-}" ] && EXTRA+=(--weights "$WEIGHTS")
[ -n "${ONLY:-}" ] && EXTRA+=(--only "$ONLY")
[ "${WARM_UP:-1}" = 0 ] && EXTRA+=(--no-warm-up)
[ -n "${SKIP_PYTORCH_FID:-}" ] && EXTRA+=(--skip-pytorch-fid)
PHOTO_ARGS=()
[ -n "${PHOTOS:-}" ] && PHOTO_ARGS+=(--photos "$PHOTOS")
[ -n "${WEIGHTS:-}" ] && PHOTO_ARGS+=(--weights "$WEIGHTS")
START=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - START )) s] $*"; }

step "environment"
python - <<'EOF' 2>&1 | tee "$OUT/fid-environment.txt"
import importlib, os, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs",
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "CPUs", len(os.sched_getaffinity(0)))
for name in ("torchvision", "scipy", "pytorch_fid", "tqdm", "skimage"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "installed"))
    except ImportError as err:
        print(name, "MISSING:", err)
EOF

for s in $STEPS; do
  case "$s" in
    tests)
      step "GPU tests of inception_fast.fid"
      timeout 300 python -m pytest tests/test_fid_features.py -m cuda -q -p no:cacheprovider -rs > "$OUT/fid-tests.log" 2>&1
      echo "exit code $?"; tail -15 "$OUT/fid-tests.log" ;;
    compare)
      step "end to end: pytorch-fid against inception-fast fid, GPUs $GPUS, $COUNT + $COUNT JPEGs"
      timeout 570 python benchmarks/fid/compare.py --out "$OUT" --data "$DATA" --count "$COUNT" --gpus "$GPUS" \
        "${EXTRA[@]}" 2>&1 | tee "$OUT/fid-compare.log" | grep -v "^    \|^---" ;
      echo "exit code ${PIPESTATUS[0]}"; cat "$OUT/fid-compare.md" 2>/dev/null ;;
    decode)
      step "nvJPEG against PIL"
      timeout 300 python benchmarks/fid/decode_difference.py --out "$OUT" "${PHOTO_ARGS[@]}" > "$OUT/fid-decode.log" 2>&1
      echo "exit code $?"; tail -12 "$OUT/fid-decode.log" ;;
    precision)
      step "fp16/bf16 against fp32"
      timeout 400 python benchmarks/fid/precision.py --out "$OUT" "${PHOTO_ARGS[@]}" > "$OUT/fid-precision.log" 2>&1
      echo "exit code $?"; tail -14 "$OUT/fid-precision.log" ;;
    *) echo "unknown step $s" ;;
  esac
done
step "done"
