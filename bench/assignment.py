"""Run-time assignment against the static binding, with two CPU sidecars of which one is slowed down.

Starts two real `sidecar serve` processes (the demo's tiny models, --device cpu, one thread each), writes
`--parts` part files (random DNA frames and their proteins), and slows sidecar B down for real: a thread
stops and continues its process (SIGSTOP/SIGCONT) so that it is stopped `--stopped` of every `--period`
seconds. The parts then go through the real embed step (virnucflow.embed_part.run, the code of `virnucflow
embed`), `--concurrency` at a time as Snakemake's jobs would run, once per mode:
- static: part k is sent to sidecar k mod 2 (the earlier binding);
- runtime: each part names both endpoint files, its home (k mod 2) first, and goes to the one that will
  finish it first (sidecar/assign.py).
Per mode it prints the wall time, the parts and the last end per sidecar, and the tail: the end of the run
during which a worker sits idle (nothing left to start) while a part still runs, from the first part to
end after the last one started.

    python bench/assignment.py --parts 24 --seqs 200 --concurrency 2 --stopped 0.75 --out assign.json
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("static", "runtime")
STOP_CODONS = ("TAA", "TAG", "TGA")


def write_parts(directory, n, seqs, seed=0):
    """`n` parts of `seqs` stop-free frames each: [(dna file, protein file)]."""
    from virnucflow.translation import translate_frame

    rng = random.Random(seed)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOP_CODONS]
    parts = []
    for k in range(n):
        dna, protein = Path(directory) / f"part_{k}.fa", Path(directory) / f"part_{k}.faa"
        frames = ["".join(rng.choice(sense) for _ in range(rng.randint(40, 100))) for _ in range(seqs)]
        dna.write_text("".join(f">p{k}_{i}\n{f}\n" for i, f in enumerate(frames)))
        protein.write_text("".join(f">p{k}_{i}\n{translate_frame(f, 0)}\n" for i, f in enumerate(frames)))
        parts.append((dna, protein))
    return parts


class Sidecars:
    """Two `sidecar serve` processes on the CPU, A and B, with the given models."""

    def __init__(self, directory, esm2, dnabert_s):
        self.files = [Path(directory) / "a.json", Path(directory) / "b.json"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(f), "--esm2", str(esm2),
             "--dnabert-s", str(dnabert_s), "--device", "cpu", "--threads", "1", "--log", f"{f}.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for f in self.files]

    def wait_ready(self, timeout=120):
        from sidecar.client import SidecarClient

        deadline = time.monotonic() + timeout
        while not all(f.exists() for f in self.files):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a sidecar did not start")
            time.sleep(0.05)
        for f in self.files:
            with SidecarClient(f, ready_timeout=timeout) as client:
                client.wait_ready()
        return self

    def pids(self):
        return [p.pid for p in self.procs]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class DutyCycle:
    """Stop process `pid` for `stopped` of every `period` seconds (SIGSTOP/SIGCONT) while in the block."""

    def __init__(self, pid, stopped, period=0.2):
        self.pid, self.stopped, self.period = pid, stopped, period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            self.done.wait(self.period * self.stopped)
            os.kill(self.pid, signal.SIGCONT)
            self.done.wait(self.period * (1 - self.stopped))
        os.kill(self.pid, signal.SIGCONT)

    def __enter__(self):
        if self.stopped > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()


def embed_part(part, endpoints, out_dir, settings_args):
    """One part through the embed step with the given endpoint files; (start, end, sidecar pid)."""
    import argparse as ap

    from virnucflow.embed_part import add_arguments, run

    dna, protein = part
    out = Path(out_dir) / dna.stem
    parser = ap.ArgumentParser()
    add_arguments(parser, "sidecar")
    args = [a for f in endpoints for a in ("--endpoint-file", str(f))] + settings_args + [
        "--nucleotide", str(dna), "--protein", str(protein), "--dnabert-out", f"{out}_D.npz",
        "--esm-out", f"{out}_E.npz", "--provenance-out", f"{out}.json"]
    start = time.monotonic()
    run(parser.parse_args(args))
    end = time.monotonic()
    return start, end, json.loads(Path(f"{out}.json").read_text())["sidecar"]["pid"]


def run_parts(parts, sidecar_files, mode, concurrency, out_dir, settings_args):
    """Embed every part in `mode`; returns the per-part records and the summary."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)

    def endpoints(k):
        home, other = sidecar_files[k % 2], sidecar_files[(k + 1) % 2]
        return [home] if mode == "static" else [home, other]

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(embed_part, part, endpoints(k), out_dir, settings_args)
                   for k, part in enumerate(parts)]
        records = [f.result() for f in futures]
    return summarize([(s - t0, e - t0, pid) for s, e, pid in records])


def summarize(records):
    """Wall time, tail and per-sidecar counts. The tail is the end of the run during which fewer parts ran
    than could (a worker idle, nothing left to start): from the first end after the last start."""
    wall = max(e for _, e, _ in records)
    last_start = max(s for s, _, _ in records)
    tail_from = min(e for _, e, _ in records if e >= last_start)
    by_pid = {}
    for _, end, pid in records:
        entry = by_pid.setdefault(pid, {"parts": 0, "last_end_s": 0.0})
        entry["parts"] += 1
        entry["last_end_s"] = round(max(entry["last_end_s"], end), 3)
    return {"wall_s": round(wall, 3), "tail_s": round(wall - tail_from, 3), "sidecars": by_pid}


def measure(directory, parts, mode, esm2, dnabert, settings, ns):
    """One mode on two fresh sidecars, B slowed down; the client's log lines go to <directory>/clients.log."""
    import contextlib

    directory.mkdir(parents=True)
    sidecars = Sidecars(directory, esm2, dnabert).wait_ready()
    names = {sidecars.pids()[0]: "A (fast)", sidecars.pids()[1]: "B (slowed)"}
    try:
        with DutyCycle(sidecars.pids()[1], ns.stopped, ns.period), \
                open(directory / "clients.log", "w") as log, contextlib.redirect_stderr(log):
            r = run_parts(parts, sidecars.files, mode, ns.concurrency, directory / "out", settings)
    finally:
        sidecars.close()
    r["sidecars"] = {names[pid]: e for pid, e in r["sidecars"].items()}
    return r


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=24)
    parser.add_argument("--seqs", type=int, default=200, help="frames per part")
    parser.add_argument("--concurrency", type=int, default=2, help="parts embedded at once (Snakemake's cores)")
    parser.add_argument("--stopped", type=float, default=0.75, help="fraction of time sidecar B is stopped")
    parser.add_argument("--period", type=float, default=0.2, help="seconds of one stop/continue cycle")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", help="write the summary as JSON here")
    ns = parser.parse_args(argv)
    from virnucflow.demo_models import DNABERT_DIR, ESM2_FILE, write_demo_models

    with tempfile.TemporaryDirectory(prefix="assign-bench-") as tmp:
        models = write_demo_models(Path(tmp) / "models")
        esm2, dnabert = models / ESM2_FILE, models / DNABERT_DIR
        parts = write_parts(tmp, ns.parts, ns.seqs)
        settings = ["--esm2", str(esm2), "--dnabert-s", str(dnabert)]
        result = {"parts": ns.parts, "seqs": ns.seqs, "concurrency": ns.concurrency, "stopped": ns.stopped,
                  "period": ns.period, "modes": {}}
        for mode in ns.modes:  # fresh sidecars for each mode: nothing learnt in one mode helps the other
            result["modes"][mode] = measure(Path(tmp) / mode, parts, mode, esm2, dnabert, settings, ns)
    for mode, r in result["modes"].items():
        per = ", ".join(f"{name}: {e['parts']} parts, last end {e['last_end_s']:.1f} s"
                        for name, e in sorted(r["sidecars"].items()))
        print(f"{mode:8s} wall {r['wall_s']:.1f} s, tail {r['tail_s']:.1f} s; {per}")
    if ns.out:
        Path(ns.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
