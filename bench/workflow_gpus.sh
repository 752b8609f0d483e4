#!/bin/bash
# The whole workflow through snakemake on the 2-GPU H200 machine, at real model size (random weights): once on
# 1 GPU, once on 2 (bench/workflow_gpus.py). Run from the repository root with .whl (snakemake and the packages
# the image lacks) and .benchdata (the real DNABERT-S tokenizer) carried:
#   bash bench/workflow_gpus.sh        (about 5-6 minutes; ARGS="--frames N" changes the workload, LIMIT the time
#                                       the runs get, SIZE=tiny ARGS="--device cpu ..." is the CPU check)
# $OUT gets two files: workflow_gpus.json (the summary) and workflow_gpus_logs.tgz (every run's logs).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
KEEP=/tmp/wf_keep
mkdir -p "$OUT" "$KEEP"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "workflow_gpus.sh: installing .whl failed (was .whl carried?)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader; nproc
  python3 -c "import torch, snakemake as s; print('torch', torch.__version__, torch.version.cuda, s.__version__)"
} 2>&1 | tee "$KEEP/machine.txt"
TOKENIZER=.benchdata/tokenizer.json
[ -f $TOKENIZER ] || { echo "warning: no $TOKENIZER (carry .benchdata): DNABERT-S gets a tiny tokenizer"; TOKENIZER=; }
SIZE=${SIZE:-real}
python3 bench/real_models.py --out /tmp/m --size $SIZE ${TOKENIZER:+--tokenizer $TOKENIZER} 2>&1 | tee $KEEP/models.log
timeout -k 60 ${LIMIT:-450} python3 bench/workflow_gpus.py --models-dir /tmp/m --size $SIZE --work /tmp/wf \
  --keep "$KEEP" --out "$OUT/workflow_gpus.json" --gpus 1,2 --cores ${CORES:-16} ${ARGS:-} 2>&1 \
  | tee "$KEEP/driver.log"
rc=${PIPESTATUS[0]}
tar -czf "$OUT/workflow_gpus_logs.tgz" -C "$(dirname $KEEP)" "$(basename $KEEP)"
if [ "$(stat -c %s "$OUT/workflow_gpus_logs.tgz")" -gt 15000000 ]; then  # too big to come back: drop the results
  rm -rf "$KEEP"/*/results
  tar -czf "$OUT/workflow_gpus_logs.tgz" -C "$(dirname $KEEP)" "$(basename $KEEP)"
fi
ls -l "$OUT"
exit $rc
