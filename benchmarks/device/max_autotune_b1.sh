#!/usr/bin/env bash
# torch.compile max-autotune (with freezing) at batch 1, one network after another, beside the
# fused model: the anchor whose compile alone can outlast one device call (GoogLeNet's took more
# than 450 s). So it runs detached on a warm machine while other calls use it:
#
#   bash benchmarks/device/max_autotune_b1.sh start      # returns at once; MODELS, DIR knobs
#   bash benchmarks/device/max_autotune_b1.sh status     # which networks are done
#   OUT=dir bash benchmarks/device/max_autotune_b1.sh collect WAIT_S
#                          # waits up to WAIT_S for the run to end, copies its files to OUT
#
# Inductor's caches (graph and autotune results, in /tmp) stay on the machine, so a second
# `inception-fast bench` of the same network afterwards reuses them and times the anchor
# without other work on the GPU: the detached run's own times are taken while other calls may
# be running, and are for the compile time only.
# Files in DIR (default /tmp/max_autotune_b1): <model>.json, <model>.log, done.
set -u
cd "$(dirname "$0")/../.." || exit 2
DIR=${DIR:-/tmp/max_autotune_b1}
MODELS=${MODELS:-googlenet,inception_v3,inception_resnet_v2}
mode=${1:-start}

case "$mode" in
  start)
    mkdir -p "$DIR" && rm -f "$DIR/done"
    setsid nohup bash "$0" run > "$DIR/driver.log" 2>&1 < /dev/null &
    echo "started: $MODELS into $DIR"
    ;;
  run)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    for model in ${MODELS//,/ }; do
      start=$(date +%s)
      echo "[$(date +%T)] $model"
      python -m inception_fast bench --model "$model" --batch 1 --no-floor --no-fused-graph \
        --compile-anchors compile-max-autotune-freezing --budget-ms 300 \
        --json "$DIR/$model.json" > "$DIR/$model.log" 2>&1
      echo "[$(date +%T)] $model: exit $?, $(( $(date +%s) - start )) s"
    done
    touch "$DIR/done"
    ;;
  status)
    cat "$DIR/driver.log" 2>/dev/null
    [ -e "$DIR/done" ] && echo "all done" || echo "still running"
    ;;
  collect)
    wait_s=${2:-0}
    waited=0
    while [ ! -e "$DIR/done" ] && [ "$waited" -lt "$wait_s" ]; do sleep 5; waited=$((waited + 5)); done
    cat "$DIR/driver.log" 2>/dev/null
    mkdir -p "$OUT/max-autotune" && cp "$DIR"/*.json "$DIR"/*.log "$OUT/max-autotune/" 2>/dev/null
    [ -e "$DIR/done" ] && echo "all done" || echo "still running after ${waited} s"
    ;;
  *)
    echo "usage: $0 start|status|collect [WAIT_S]"; exit 2
    ;;
esac
