"""Sidecars under load on GPUs: GPU busy fraction with concurrent per-file clients, and scaling to two GPUs.

Starts one fast-mode sidecar per GPU (both models each, loaded before any timing), then runs scenarios,
each on fresh frames (so the deduplication cache cannot help), with all of a scenario's clients
(`python -m sidecar embed`, one per part file, as the workflow runs them) started at once:

- busy:      4 clients, both models, one sidecar (GPU 0): wall time, and the GPU busy fraction from
             `nvidia-smi --query-gpu=utilization.gpu` sampled every 100 ms over the clients' wall time
             (the percentage of time in which a kernel was running), plus server compute time / wall.
- esm_1gpu / esm_2gpu, dna_1gpu / dna_2gpu: the same files (ESM-2 only, or DNABERT-S only), all clients
             on GPU 0, or split evenly over both sidecars: scaling = wall(1 GPU) / wall(2 GPUs).
- dedup:     the busy scenario's files sent again: every sequence a cache hit.

    python bench/sidecar_gpu.py --models-dir /tmp/m --gpus 0,1 --out sidecar_gpu.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import ESM_SIZES  # noqa: E402
from workload import write_parts  # noqa: E402

from sidecar.client import SidecarClient  # noqa: E402

RESULT = {}
SPY_DIR, SPY_SECONDS = None, 8


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


class Sampler:
    """nvidia-smi utilization.gpu samples (time, gpu index, percent) in a background thread."""

    def __init__(self, interval_ms=100):
        self.samples = []
        self.proc = None
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={interval_ms}"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                index, util = (int(x) for x in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), index, util))

    def mean(self, gpu, start, end):
        values = [u for t, i, u in self.samples if i == gpu and start <= t <= end]
        return (sum(values) / len(values) / 100.0, len(values)) if values else (None, 0)

    def stop(self):
        if self.proc:
            self.proc.terminate()


def compute_s(endpoint):
    with SidecarClient(str(endpoint)) as client:
        st = client.status()
    return sum(m["compute_s"] for m in st["models"].values()), st


def run_clients(parts, endpoints, work, which):
    """One client per part file, round-robin over the sidecars, all at once; returns wall seconds."""
    procs = []
    start = time.monotonic()
    for k, (fa, faa) in enumerate(parts):
        endpoint = endpoints[k % len(endpoints)]
        cmd = [sys.executable, "-m", "sidecar", "embed", "--endpoint-file", str(endpoint), "--mode", "fast"]
        if "dna" in which:
            cmd += ["--nucleotide", str(fa), "--dnabert-out", str(work / f"{fa.stem}_{k}_dna.npz")]
        if "esm" in which:
            cmd += ["--protein", str(faa), "--esm-out", str(work / f"{fa.stem}_{k}_esm.npz")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"client failed ({p.returncode}): {err[-2000:]}")
    return start, time.monotonic()


def py_spy(pid, name, seconds):
    """Sample the first sidecar's Python stacks (py-spy, if installed) while a scenario runs: collapsed stacks
    with thread names and idle frames, for reading where the server's host time goes."""
    if not SPY_DIR or not shutil.which("py-spy"):
        return None
    out = Path(SPY_DIR) / f"pyspy_{name}.txt"
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                             "--format", "raw", "--threads", "--idle", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scenario(name, parts, endpoints, gpus, work, which, sampler, tokens=None, spy_pid=None):
    before = [compute_s(e)[0] for e in endpoints]
    spy = py_spy(spy_pid, name, SPY_SECONDS) if spy_pid else None
    start, end = run_clients(parts, endpoints, work, which)
    if spy:
        spy.wait()
    wall = end - start
    after = [compute_s(e) for e in endpoints]
    out = {"clients": len(parts), "sidecars": len(endpoints), "models": which, "wall_s": wall,
           "server_compute_over_wall": [(a[0] - b) / wall for a, b in zip(after, before)],
           "gpu_busy_nvidia_smi": {}, "dedup": {g: {m: s["dedup"] for m, s in a[1]["models"].items()}
                                                for g, a in zip(gpus, after)}}
    for gpu in gpus:
        busy, n = sampler.mean(gpu, start, end)
        out["gpu_busy_nvidia_smi"][str(gpu)] = {"fraction": busy, "samples": n}
    if tokens:
        out["tokens_per_s"] = {m: t / wall for m, t in tokens.items()}
    RESULT[name] = out
    log(name, json.dumps(out))
    return out


def count_tokens(parts, dna_tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dna_tokenizer))
    tok.no_truncation()
    dna = esm = 0
    for fa, faa in parts:
        seqs = [line for line in Path(fa).read_text().splitlines() if not line.startswith(">")]
        dna += sum(len(e.ids) for e in tok.encode_batch(seqs))
        esm += sum(len(line) + 2 for line in Path(faa).read_text().splitlines() if not line.startswith(">"))
    return {"dnabert_s": dna, "esm2": esm}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--gpus", default="0,1")
    ap.add_argument("--device-prefix", default="cuda:", help="'cpu' runs the sidecars on the CPU (a smoke test)")
    ap.add_argument("--busy-files", type=int, default=4)
    ap.add_argument("--busy-per-file", type=int, default=2000)
    ap.add_argument("--scale-files", type=int, default=8)
    ap.add_argument("--esm-per-file", type=int, default=1000)
    ap.add_argument("--dna-per-file", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--py-spy-dir", help="record the first sidecar with py-spy during the busy and DNABERT-S "
                    "1-GPU scenarios (collapsed stacks written here)")
    ap.add_argument("--out")
    args = ap.parse_args()
    global SPY_DIR
    SPY_DIR = args.py_spy_dir

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: stopping early, writing what was measured"))
    gpus = [int(g) for g in args.gpus.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sidecar-gpu-"))
    esm = Path(args.models_dir) / f"esm2_t{ESM_SIZES[args.size]['num_layers']}_{args.size}_random.pt"
    dna = Path(args.models_dir) / f"dnabert_s_{args.size}_random"
    servers, endpoints = [], []
    sampler = Sampler()
    try:
        t0 = time.monotonic()
        for gpu in gpus:
            endpoint = work / f"sidecar{gpu}.json"
            device = f"{args.device_prefix}{gpu}" if args.device_prefix != "cpu" else "cpu"
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint), "--esm2", str(esm),
                 "--dnabert-s", str(dna), "--device", device, "--mode", "fast", "--log", str(work / f"s{gpu}.log")]))
            endpoints.append(endpoint)
        # make the inputs while the models load
        sets = {
            "busy": write_parts(work / "busy", args.busy_files, args.busy_per_file, 500, seed=11, workers=args.workers),
            "esm": write_parts(work / "esm", args.scale_files, args.esm_per_file, 500, seed=12, workers=args.workers),
            "esm_b": write_parts(work / "esm_b", args.scale_files, args.esm_per_file, 500, seed=13,
                                 workers=args.workers),
            "dna": write_parts(work / "dna", args.scale_files, args.dna_per_file, 500, seed=14, workers=args.workers),
            "dna_b": write_parts(work / "dna_b", args.scale_files, args.dna_per_file, 500, seed=15,
                                 workers=args.workers),
        }
        log(f"inputs written after {time.monotonic() - t0:.1f} s")
        for endpoint in endpoints:
            while not endpoint.exists():
                time.sleep(0.2)
            with SidecarClient(str(endpoint)) as client:
                client.wait_ready(timeout=600)
        RESULT["sidecars_ready_s"] = time.monotonic() - t0
        log(f"sidecars ready after {RESULT['sidecars_ready_s']:.1f} s")
        tokenizer = dna / "tokenizer.json"
        one = endpoints[:1]
        # warm-up (first kernels, allocator): a small file through every sidecar
        warm = write_parts(work / "warm", len(endpoints), 300, 500, seed=10)
        run_clients(warm, endpoints, work, ("dna", "esm"))
        scenario("busy_4_clients_1gpu", sets["busy"], one, gpus[:1], work, ("dna", "esm"), sampler,
                 count_tokens(sets["busy"], tokenizer), spy_pid=servers[0].pid)
        if len(endpoints) > 1:
            esm_tokens = count_tokens(sets["esm"], tokenizer)["esm2"]
            esm_b_tokens = count_tokens(sets["esm_b"], tokenizer)["esm2"]
            dna_tokens = count_tokens(sets["dna"], tokenizer)["dnabert_s"]
            dna_b_tokens = count_tokens(sets["dna_b"], tokenizer)["dnabert_s"]
            a = scenario("esm_1gpu", sets["esm"], one, gpus[:1], work, ("esm",), sampler, {"esm2": esm_tokens})
            b = scenario("esm_2gpu", sets["esm_b"], endpoints, gpus, work, ("esm",), sampler, {"esm2": esm_b_tokens})
            RESULT["esm_scaling"] = (a["wall_s"] / esm_tokens) / (b["wall_s"] / esm_b_tokens)
            c = scenario("dna_1gpu", sets["dna"], one, gpus[:1], work, ("dna",), sampler,
                         {"dnabert_s": dna_tokens}, spy_pid=servers[0].pid)
            d = scenario("dna_2gpu", sets["dna_b"], endpoints, gpus, work, ("dna",), sampler,
                         {"dnabert_s": dna_b_tokens})
            RESULT["dna_scaling"] = (c["wall_s"] / dna_tokens) / (d["wall_s"] / dna_b_tokens)
            log(f"scaling (token-normalised wall time, 1 GPU / 2 GPUs): ESM-2 {RESULT['esm_scaling']:.2f}x, "
                f"DNABERT-S {RESULT['dna_scaling']:.2f}x")
        scenario("dedup_resend", sets["busy"], one, gpus[:1], work, ("dna", "esm"), sampler)
    finally:
        sampler.stop()
        for s in servers:
            s.terminate()
        for s in servers:
            try:
                s.wait(timeout=60)
            except subprocess.TimeoutExpired:
                s.kill()
        if args.out:
            Path(args.out).write_text(json.dumps(RESULT, indent=1))
    os.system(f"tail -n 5 {work}/s*.log")


if __name__ == "__main__":
    main()
