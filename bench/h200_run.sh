#!/bin/bash
# The H200 runs of docs/benchmarks.md (issue 4), on a machine with two GPUs; results under $OUT.
#   bash bench/h200_run.sh            (expects PYTHONPATH to hold fair-esm, pyzmq and the repo)
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"
python bench/real_models.py --out /tmp/m --tokenizer .benchdata/tokenizer.json 2>&1 | tee "$OUT/models.log"
timeout 330 python bench/throughput.py reference --models-dir /tmp/m --device cuda:1 --ref /tmp/ref.npz ${REF_ARGS:-} \
  > "$OUT/reference.log" 2>&1 &
REF=$!
timeout 340 python bench/throughput.py speed --models-dir /tmp/m --device cuda:0 --ref /tmp/ref.npz ${REF_ARGS:-} \
  --wait-ref 300 ${SPEED_ARGS:-} --out "$OUT/throughput.json" 2>&1 | tee "$OUT/speed.log"
wait $REF
timeout ${SIDECAR_LIMIT:-200} python bench/sidecar_gpu.py --models-dir /tmp/m --gpus 0,1 ${SIDECAR_ARGS:-} \
  --out "$OUT/sidecar_gpu.json" 2>&1 | tee "$OUT/sidecar_gpu.log"
