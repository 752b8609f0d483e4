"""Parts that finish one after another against parts that all finish at the end: the sidecar's job order.

A part's client (the embed step) sends its sequences in requests of at most `max_request_seqs`, a window
of them at a time, one connection per model. With the queue in arrival order, the requests of parts sent
side by side interleave, every part advances at the same pace and all of them finish near the end of the
embedding, so their merge and classification wait for the last one. With the oldest part first
(sidecar.batcher; both models' requests of a part carry the same `part` key, and a job's priority is when
the sidecar first saw its key), a part's later requests overtake those of parts that started after it,
and the parts finish one after another while the GPU stays as full.

One real `sidecar serve` on the CPU (the demo's tiny models, one thread) per order: "arrival" is the server
with the priority taken away (every job's priority None, its arrival time), "oldest-part" the server as it
is. `--parts` parts of `--frames` frames are sent at once, each part as the embed step sends it: both models
side by side, each on its own SidecarClient with requests of `--request-seqs` (the workflow's 1,024 of a
10,000-frame part, scaled down), to a sidecar whose batches hold `--batch-tokens` (scaled down likewise).
Printed per order: each part's finish, their mean, and the ratio of the mean finishes (oldest-part /
arrival); the last finish (the GPU's work) should not change.

    python bench/part_order.py --parts 4 --frames 300 --request-seqs 50 --batch-tokens 2048 --out order.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from results import emit  # noqa: E402
from assignment import write_parts  # noqa: E402

from virnucflow.fasta import read_fasta  # noqa: E402

ORDERS = ("arrival", "oldest-part")
# the server with the priority taken away: every job is ordered by its arrival, as before
ARRIVAL = ("import sys; import sidecar.router as r; r.Router._since = lambda self, key: None; "
           "from sidecar.cli import main; sys.exit(main(sys.argv[1:]))")


def start_server(order, directory, models, batch_tokens):
    endpoint = Path(directory) / f"{order}.json"
    head = [sys.executable, "-c", ARRIVAL] if order == "arrival" else [sys.executable, "-m", "sidecar"]
    proc = subprocess.Popen(
        head + ["serve", "--endpoint-file", str(endpoint), "--esm2", str(models / "esm2_t2_demo.pt"),
                "--dnabert-s", str(models / "dnabert_s_demo"), "--device", "cpu", "--mode", "fast",
                "--threads", "1", "--max-batch-tokens", str(batch_tokens), "--log", f"{endpoint}.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc, endpoint


def wait_ready(proc, endpoint, timeout=120):
    from sidecar.client import SidecarClient

    deadline = time.monotonic() + timeout
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {endpoint.stem} sidecar did not start")
        time.sleep(0.05)
    with SidecarClient(endpoint, ready_timeout=timeout) as client:
        client.wait_ready()


def send_parts(endpoint, parts, request_seqs):
    """Every part at once, both models side by side; each part's finish in seconds from the start."""
    from sidecar.client import SidecarClient

    finish = [[0.0, 0.0] for _ in parts]
    start_line = threading.Barrier(2 * len(parts) + 1)

    def send(k, m, model, path):
        records = list(read_fasta(path))
        with SidecarClient(endpoint, max_request_seqs=request_seqs) as client:
            client.ping()
            start_line.wait()
            client.embed(model, [r for r, _ in records], [s for _, s in records], part=f"part{k}")
        finish[k][m] = time.monotonic()

    threads = [threading.Thread(target=send, args=(k, m, model, path))
               for k, (dna, protein) in enumerate(parts)
               for m, (model, path) in enumerate((("dnabert_s", dna), ("esm2", protein)))]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    return [round(max(f) - start, 2) for f in finish]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--frames", type=int, default=600, help="frames per part")
    ap.add_argument("--request-seqs", type=int, default=50, help="sequences per request (the workflow: 1,024)")
    ap.add_argument("--batch-tokens", type=int, default=2048,
                    help="the sidecar's token budget per batch (the workflow's 65,536 of ESM-2 on a GPU, scaled down)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "virnucflow", "make-demo-models", "--out-dir", str(tmp / "models")],
                       check=True, capture_output=True)
        parts = write_parts(tmp, args.parts, args.frames)
        result = {"parts": args.parts, "frames_per_part": args.frames, "request_seqs": args.request_seqs,
                  "batch_tokens": args.batch_tokens, "orders": {}}
        for order in ORDERS:
            proc, endpoint = start_server(order, tmp, tmp / "models", args.batch_tokens)
            try:
                wait_ready(proc, endpoint)
                finish = send_parts(endpoint, parts, args.request_seqs)
            finally:
                proc.terminate()
                proc.wait(30)
            result["orders"][order] = {"finish_s": finish, "mean_finish_s": round(sum(finish) / len(finish), 2),
                                       "last_finish_s": max(finish)}
            print(order, json.dumps(result["orders"][order]), flush=True)
        a, o = result["orders"]["arrival"], result["orders"]["oldest-part"]
        result["mean_finish_ratio"] = round(o["mean_finish_s"] / a["mean_finish_s"], 3)
        result["last_finish_ratio"] = round(o["last_finish_s"] / a["last_finish_s"], 3)
    emit(result, args.out)


if __name__ == "__main__":
    main()
