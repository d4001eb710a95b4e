#!/usr/bin/env bash
# The GPU backends on a GPU machine, in one go (about 10 minutes on an H100):
#   1. build the extension (just in time, into a fresh cache directory);
#   2. every kernel under compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1, so an
#      access past a buffer is past an allocation) and racecheck (shared memory): the cuda
#      backend's stage kernel in fp16 and bf16, the triton stage kernel in fp16, bf16, fp32 on
#      TF32 and exact fp32 (split-K on the shipped batch-1 tiles of 132-SM Hopper cards) and its
#      layout kernel; convs, avg and max pools and the head, on odd batches and sizes; then the
#      family's own kernel variants in fp16 (GoogLeNet's ceil-mode max-pools, Inception-v3's
#      include-pad average pools and split 1x3 / 3x1 branches, Inception-ResNet-v2's residual
#      epilogue) on the cuda, triton and triton-block backends;
#   3. the GPU tests of the backend, the autoselector and the build;
#   4. per-block and whole-model times, fp16, batch 1 / 32 / 256: cuda vs torch (and triton).
# Usage, from the repository root:  bash benchmarks/device/cuda_check.sh
#   PHASES="1 2" bash benchmarks/device/cuda_check.sh   runs only the phases named.
# Phase 2's knobs: SANITIZED_BACKENDS="cuda triton triton-block", SANITIZER_TOOLS="memcheck
# racecheck", SANITIZED_MODELS=inception_v4,googlenet,inception_v3,inception_resnet_v2 (default
# all), SANITIZER_TIMEOUT_S=900 per run, WORK=dir for the logs.
# Every phase runs even when an earlier one fails; the exit status is non-zero if any failed.
set -u
cd "$(dirname "$0")/../.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export INCEPTION_FAST_CACHE_DIR="${INCEPTION_FAST_CACHE_DIR:-$(mktemp -d /tmp/inception_fast_cuda_check.XXXXXX)}"
PY="${PYTHON:-python}"
WORK="${WORK:-$(mktemp -d)}"  # the logs stay here
mkdir -p "$WORK" || exit 2
failed=()
PHASES=${PHASES:-1 2 3 4}
phase() { echo; echo "=== $1 ($(date +%T))"; }
wanted() { [[ " $PHASES " == *" $1 "* ]]; }

phase "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - <<'EOF'
import torch
from inception_fast import extension
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("cuda toolkit", extension.find_cuda_home(), "arch flags", " ".join(extension.arch_flags()))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
EOF

if wanted 1; then
phase "1. build the extension"
start=$(date +%s)
if timeout 600 "$PY" -c "from inception_fast.extension import load; print('loaded', load())"; then
  echo "build: OK in $(( $(date +%s) - start )) s"
else
  echo "build: FAILED"; failed+=(build)
fi
fi

if wanted 2; then
phase "2. compute-sanitizer"
SANITIZER="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
cat > "$WORK/every_kernel.py" <<'EOF'
# Every kernel of one GPU backend: Inception-v4 (every block kind and the head) per dtype, then
# the family's networks in fp16 (their own kernel variants: ceil-mode and include-pad pools,
# 1x3 / 3x1 windows, the residual epilogue).
# argv: backend (cuda, triton or triton-block), then "full" (odd batch and sizes, and batch 1
# at 299x299, where 132-SM Hopper cards take the shipped split-K tiles) or "small" (one small image),
# then optionally the networks to run, comma-separated (default: all four).
import sys

import torch

from inception_fast import optimize
from inception_fast.testing import calibrated_model

backend, extent = sys.argv[1], sys.argv[2]
dtypes = {"cuda": ["fp16", "bf16"], "triton": ["fp16", "bf16", "fp32-tf32", "fp32"], "triton-block": ["fp16"]}
full = extent == "full"
cases = [("inception_v4", dtypes[backend], [(3, 91, 97), (1, 299, 299)] if full else [(1, 75, 75)])]
cases += [(name, ["fp16"], [(2, 101, 107)] if full else [(1, 75, 75)])
          for name in ("googlenet", "inception_v3", "inception_resnet_v2")]
if len(sys.argv) > 3:
    cases = [case for case in cases if case[0] in sys.argv[3].split(",")]
with torch.no_grad():
    for model_name, names, shapes in cases:
        # Calibrated at its own input size: O(1) activations at every size run below.
        model = calibrated_model(model_name).cuda()
        for name in names:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name, torch.float32)
            torch.backends.cudnn.allow_tf32 = name == "fp32-tf32"  # the triton backend follows it
            fused = optimize(model, backend=backend, dtype=dtype, cuda_graph=False)
            for n, h, w in shapes:
                out = fused(torch.randn(n, 3, h, w, device="cuda", dtype=dtype))
                torch.cuda.synchronize()
                assert torch.isfinite(out).all(), "non-finite output"
                print(backend, model_name, name, (n, h, w), tuple(out.shape), "ok", flush=True)
EOF
# No tile timing under the sanitizers: shipped or heuristic tiles only.
export INCEPTION_FAST_AUTOTUNE=0
for backend in ${SANITIZED_BACKENDS:-cuda triton triton-block}; do
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck}; do
    extent=full; [ "$tool" = racecheck ] && extent=small
    log="$WORK/$tool-$backend.log"
    if PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT_S:-900}" "$SANITIZER" --tool "$tool" --error-exitcode 3 \
        --print-limit 20 "$PY" "$WORK/every_kernel.py" "$backend" "$extent" ${SANITIZED_MODELS:-} > "$log" 2>&1; then
      echo "$tool $backend: OK ($(grep -c ' ok$' "$log") runs); $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
    else
      echo "$tool $backend: FAILED (exit $?)"; tail -40 "$log"; failed+=("$tool-$backend")
    fi
  done
done
unset INCEPTION_FAST_AUTOTUNE
fi

if wanted 3; then
phase "3. GPU tests"
timeout 900 "$PY" -m pytest -q -p no:cacheprovider --tb=short --maxfail=15 -k "not triton" \
    tests/test_gpu_backends.py tests/test_cuda_backend.py tests/test_auto_backend.py \
    tests/test_extension_build.py > "$WORK/pytest.log" 2>&1
status=$?
tail -40 "$WORK/pytest.log"
[ "$status" -eq 0 ] || failed+=(tests)
fi

if wanted 4; then
phase "4. timings (fp16, medians of CUDA-event timings, ms)"
cat > "$WORK/bench.py" <<'EOF'
import copy
import statistics
import time

import torch

from inception_fast import optimize
from inception_fast.backends import backend_status
from inception_fast.reference import InceptionV4
from inception_fast.testing import randomize_batchnorm

backends = [b for b in ("torch", "cuda", "triton") if backend_status(b)[0]]
torch.manual_seed(0)
model = randomize_batchnorm(InceptionV4().eval(), torch.Generator().manual_seed(0)).cuda()
fused = optimize(model, backend="torch", dtype=torch.float16)
# One representative of each block kind, with its input size inside the network at 299x299.
picks, size, seen = [], 299, set()
for index, block in enumerate(fused.features):
    kind = (block.plan.name, block.plan.in_channels, size)
    if kind not in seen:
        seen.add(kind)
        picks.append((index, block, size))
    size = block.output_hw(size, size)[0]


def median_ms(fn, budget_s=0.25):
    fn()
    torch.cuda.synchronize()
    times, deadline = [], time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


print(f"{'block':>24} {'batch':>5} " + " ".join(f"{b:>9}" for b in backends) + "   cuda/torch")
with torch.no_grad():
    for batch in (1, 32, 256):
        for index, block, size in picks:
            x = torch.randn(batch, block.plan.in_channels, size, size, device="cuda").relu_().half()
            x = x.contiguous(memory_format=torch.channels_last)
            ms = {}
            for name in backends:
                block.backend = name
                ms[name] = median_ms(lambda: block(x))
            ratio = ms["torch"] / ms["cuda"] if "cuda" in ms else float("nan")
            label = f"{index}:{block.plan.name}{block.plan.in_channels}@{size}"
            print(f"{label:>24} {batch:>5} " + " ".join(f"{ms[b]:9.4f}" for b in backends) + f"   {ratio:6.2f}x")
        x = torch.randn(batch, 3, 299, 299, device="cuda").half()
        ms = {}
        for name in backends:
            fused.set_backend(name)
            ms[name] = median_ms(lambda: fused(x), budget_s=1.0)
        ratio = ms["torch"] / ms["cuda"] if "cuda" in ms else float("nan")
        print(f"{'whole model':>24} {batch:>5} " + " ".join(f"{ms[b]:9.4f}" for b in backends)
              + f"   {ratio:6.2f}x   ({24.5 * batch / ms.get('cuda', float('nan')):.0f} TFLOP/s cuda)")
        fused.set_backend("torch")
print("card:", torch.cuda.get_device_name(), "| torch", torch.__version__)
EOF
timeout 600 "$PY" "$WORK/bench.py" || failed+=(bench)
fi

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "cuda_check: ALL PASSED"
else
  echo "cuda_check: FAILED: ${failed[*]}"; exit 1
fi
