"""The same N-file embedding workload two ways in one run: the original's way (a fresh process that loads
both models for every file) and through one resident sidecar. Prints per-file times, the sidecar's
per-file overhead (client start to result, minus the server's compute) and the end-to-end ratio.

    python bench/sidecar_vs_reload.py --size tiny --files 4 --per-file 50 --device cpu
    python bench/sidecar_vs_reload.py --size real --files 4 --per-file 200 --device cuda --out $OUT/sidecar.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import make_models  # noqa: E402
from workload import write_parts  # noqa: E402

from virnucflow.embedding_files import load_embeddings  # noqa: E402


def run(cmd):
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def status(endpoint):
    out = subprocess.run([sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(endpoint)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def server_compute(st):
    return sum(m["compute_s"] for m in st["models"].values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--per-file", type=int, default=50)
    ap.add_argument("--read-length", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models-dir", default=None, help="where random models are made or reused")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="virnucflow-bench-"))
    models_dir = Path(args.models_dir or work / "models")
    t0 = time.perf_counter()
    esm_path, dnabert_dir = make_models(models_dir, args.size)
    print(f"models ready in {time.perf_counter() - t0:.1f} s: {esm_path}, {dnabert_dir}", flush=True)
    parts = write_parts(work / "parts", args.files, args.per_file, args.read_length)
    model_args = ["--esm2", str(esm_path), "--dnabert-s", str(dnabert_dir), "--device", args.device]

    reload_times = []
    started = time.perf_counter()
    for k, (fa, faa) in enumerate(parts, start=1):
        reload_times.append(run([sys.executable, "-m", "virnucflow", "embed", "--nucleotide", fa, "--protein", faa,
                                 "--dnabert-out", work / f"reload_{k}_dna.npz", "--esm-out", work / f"reload_{k}_esm.npz",
                                 *model_args]))
        print(f"reload file {k}: {reload_times[-1]:.2f} s", flush=True)
    reload_total = time.perf_counter() - started

    endpoint = work / "sidecar.json"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint),
                               "--log", str(work / "sidecar.log"), "--mode", "exact", *model_args])
    try:
        deadline = time.monotonic() + 60  # the server writes its endpoint file at bind time, just after start
        while not endpoint.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        client_times, overheads = [], []
        for k, (fa, faa) in enumerate(parts, start=1):
            before = server_compute(status(endpoint)) if k > 1 else 0.0
            client_times.append(run([sys.executable, "-m", "sidecar", "embed", "--endpoint-file", endpoint,
                                     "--nucleotide", fa, "--protein", faa,
                                     "--dnabert-out", work / f"sidecar_{k}_dna.npz",
                                     "--esm-out", work / f"sidecar_{k}_esm.npz"]))
            st = status(endpoint)
            if k > 1:  # file 1 also waits for the models to load
                overheads.append(client_times[-1] - (server_compute(st) - before))
            print(f"sidecar file {k}: {client_times[-1]:.2f} s", flush=True)
        sidecar_total = time.perf_counter() - started
        loads = {name: m["loads"] for name, m in st["models"].items()}
    finally:
        server.terminate()
        server.wait(timeout=120)

    identical = all(
        np.array_equal(load_embeddings(work / f"reload_{k}_{m}.npz")[1], load_embeddings(work / f"sidecar_{k}_{m}.npz")[1])
        for k in range(1, len(parts) + 1) for m in ("dna", "esm")
    )
    result = {
        "size": args.size, "device": args.device, "files": args.files, "per_file": args.per_file,
        "reload_per_file_s": reload_times, "reload_total_s": reload_total,
        "sidecar_per_file_s": client_times, "sidecar_total_s": sidecar_total,
        "sidecar_overhead_per_file_s": overheads, "model_loads": loads,
        "ratio_end_to_end": reload_total / sidecar_total, "bit_identical": identical,
    }
    print(json.dumps(result, indent=1))
    print(f"end-to-end: reload {reload_total:.1f} s, sidecar {sidecar_total:.1f} s, ratio {result['ratio_end_to_end']:.2f}x; "
          f"sidecar per-file overhead (client start to result, minus compute) "
          f"{np.median(overheads) if overheads else float('nan'):.3f} s median; identical outputs: {identical}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
