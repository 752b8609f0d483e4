#!/bin/bash
# Seconds from `sidecar ensure` to READY, twice in a row on one machine: the first start pays the models'
# first sha256, the page cache and torch.compile's first compile; the second is the "has run it once
# before" case of issue 12 point 5. Needs bench/real_models.py's models in $MODELS (default /tmp/m).
#   bash bench/ready_time.sh [DEVICE] [MODE]       (defaults: cuda:0 fast)
#   READY_ARGS="--compile-cache-dir DIR" bash bench/ready_time.sh       (more `sidecar serve` options)
MODELS=${MODELS:-/tmp/m}
DEVICE=${1:-cuda:0}
MODE=${2:-fast}
SIZE=${SIZE:-real}
ESM=$(ls $MODELS/esm2_t*_${SIZE}_random.pt) DNA=$MODELS/dnabert_s_${SIZE}_random
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for i in 1 2; do
  start=$(date +%s.%N)
  python3 -m sidecar ensure --endpoint-file $WORK/ready_$i.json --wait ready --timeout 300 --esm2 "$ESM" \
    --dnabert-s "$DNA" --device "$DEVICE" --mode "$MODE" ${READY_ARGS:-} --log $WORK/ready_$i.log > /dev/null || { tail -5 $WORK/ready_$i.log; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print('start $i: READY after %.1f s' % ($end - $start))"
  grep -h "loaded\|compile" $WORK/ready_$i.log | sed 's/^/    /'   # each model's load, with its seconds
  python3 -m sidecar stop --endpoint-file $WORK/ready_$i.json > /dev/null
done
