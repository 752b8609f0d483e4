"""The whole workflow, end to end through `snakemake`, on 1 GPU and then on 2: wall times, and the scaling of
the embedding stage.

Given a models directory made by `bench/real_models.py` (ESM-2 fair-esm checkpoint, DNABERT-S MosaicBERT
directory, random weights), it
1. writes a random classifier for 500 bp chunks there (the original's pickle format, input 768 + 2560 at
   real size) unless one is there;
2. writes the input: `--samples` FASTA files of 500 bp coding-like reads that keep `--frames` frames in all;
3. runs `snakemake --cores N` once per entry of `--gpus` (default 1 then 2), each in a fresh work directory
   with its own config: embedding.device cuda, embedding.mode fast, embedding.gpus [0] / [0, 1], and
   records_per_file so that each run has `--parts` part files (8 per GPU at 2 GPUs by default);
4. measures each run:
   - wall: the whole snakemake run;
   - embed_jobs_s: from the first embed job's start to the last one's end (each job's end is the mtime
     of its Snakemake benchmark file, its start that minus the benchmark's seconds);
   - load_s: each sidecar's model load ("ready on ... after X s" in logs/sidecar/<slot>.server.log);
   - embed_s: embed_jobs_s without the model load: from when the first embed job started and every
     sidecar was ready, to the last embed job's end. The scaling is embed_s(1 GPU) / embed_s(2 GPUs);
   - tokens and frames per model, from the sidecars' per-request log lines;
5. checks that every run gives the results of the run on the fewest GPUs (same rows and labels; largest
   score difference), and gives the scaling against that run;
6. writes a JSON summary (--out), prints a table, and copies each run's logs, benchmarks, config and
   results tables to --keep DIR/<run>/.

The `virnucflow` and `sidecar` commands of the workflow's jobs are wrapper scripts in <work>/bin that run
`python -m virnucflow` / `python -m sidecar` with this interpreter; the repository goes on PYTHONPATH, so
nothing needs installing. Exit 1 with one line if a snakemake run fails, 2 if the runs' results disagree.

    python bench/workflow_gpus.py --models-dir /tmp/m --work /tmp/wf --keep /tmp/wf_logs --out wf.json
    python bench/workflow_gpus.py --size tiny --device cpu --frames 400 --parts 4 --cores 2 ...  (CPU check:
        there is one CPU sidecar, so every run uses that one slot)
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from workload import SENSE  # noqa: E402

from sidecar.rendezvous import pid_alive  # noqa: E402

CHUNK = 500
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) sidecar\[(\d+)\] \w+ (.*)$")


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


class RunFailed(Exception):
    pass


# --- models and input ---------------------------------------------------------------------------------

def find_models(models_dir, size):
    """real_models.py's files (found by name: importing it would import torch before the input's workers fork)."""
    models_dir = Path(models_dir).resolve()
    esm = sorted(models_dir.glob(f"esm2_t*_{size}_random.pt"))
    dna = models_dir / f"dnabert_s_{size}_random"
    if not esm or not (dna / "model.safetensors").exists():
        raise SystemExit(f"workflow_gpus: no {size} models in {models_dir}; make them first: "
                         f"python bench/real_models.py --out {models_dir} --size {size} [--tokenizer ...]")
    return esm[0], dna, models_dir / f"500_model_{size}_random.pth"


def write_classifier(path, size):
    """A random classifier for the models' widths (768 + 2560 at real size), pickled as the original's."""
    from real_models import DNA_SIZES, ESM_SIZES

    from virnucflow.classifier import write_random_classifier

    if not path.exists():
        write_random_classifier(path, input_dim=DNA_SIZES[size]["hidden_size"] + ESM_SIZES[size]["embed_dim"])


def _reads(job):
    """Reads of one worker: 500 bp of sense codons, taken while they keep no more than `n` frames in all."""
    from virnucflow.chunking import chunk_records
    from virnucflow.translation import kept_frames

    n, seed, prefix = job
    rng, reads, total = random.Random(seed), [], 0
    while total < n:
        rid = f"{prefix}r{len(reads)}"
        seq = "".join(rng.choices(SENSE, k=CHUNK // 3 + 1))[:CHUNK]
        kept = sum(len(kept_frames(cid, cseq)) for cid, cseq in chunk_records([(rid, seq)], CHUNK))
        if total + kept <= n:
            reads.append((rid, seq))
            total += kept
    return reads


def split(n, k):
    return [n // k + (i < n % k) for i in range(k)]


def write_inputs(directory, frames, samples, workers):
    """One FASTA per sample, the samples keeping `frames` frames in all; returns {sample: (path, frames)}."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    with ProcessPoolExecutor(workers) as pool:
        for s, n in enumerate(split(frames, samples)):
            jobs = [(m, s * 1000 + w, f"s{s}w{w}") for w, m in enumerate(split(n, workers)) if m]
            reads = [r for part in pool.map(_reads, jobs) for r in part]
            path = directory / f"sample{s + 1}.fa"
            path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
            out[f"sample{s + 1}"] = (path, n)
    return out


def write_wrappers(bindir):
    """`virnucflow` and `sidecar` as `python -m ...` with this interpreter: no install needed."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in ("virnucflow", "sidecar"):
        path = bindir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {name} "$@"\n')
        path.chmod(0o755)


# --- one run -----------------------------------------------------------------------------------------

def write_config(workdir, inputs, models, args, n_gpus):
    import yaml

    esm, dna, classifier = models
    sheet = workdir / "samples.tsv"
    sheet.write_text("sample\tfasta\n" + "".join(f"{s}\t{p}\n" for s, (p, _) in inputs.items()))
    per_sample = max(1, args.parts // len(inputs))
    embedding = {"sidecar": True, "device": args.device, "mode": args.mode, "idle_timeout": 900}
    if args.device != "cpu":
        embedding["gpus"] = list(range(n_gpus))
    config = {
        "samples": str(sheet), "chunk_size": CHUNK, "keep_intermediate": False, "demo_models": False,
        "records_per_file": max(1, math.ceil(max(n for _, n in inputs.values()) / per_sample)),
        "models": {"esm2": str(esm), "dnabert_s": str(dna), "classifiers": {str(CHUNK): str(classifier)}},
        "embedding": embedding,
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(name, workdir, config, env, args, keep):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", str(args.cores), "--printshellcmds"]
    out = workdir / "snakemake.out"
    start = time.time()
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            code = proc.wait(timeout=args.run_timeout or None)
        except subprocess.TimeoutExpired:
            stop(proc)
            code = f"timed out after {args.run_timeout} s"
        except BaseException:  # our own SIGTERM or ^C: stop snakemake (its sidecars follow it)
            stop(proc, grace=10)
            raise
    wall = time.time() - start
    if code != 0:
        text = out.read_text(errors="replace")
        print("\n".join(f"  | {line}" for line in text.splitlines()[-30:]), file=sys.stderr)
        for job_log in sorted(set(re.findall(r"log: (\S+) \(check log file", text))):  # the failed jobs' own logs
            path = workdir / job_log
            lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
            print(f"  {job_log}:", *(f"  | {line}" for line in lines[-8:]), sep="\n", file=sys.stderr)
        raise RunFailed(f"snakemake run '{name}' failed ({code}); its logs are in {keep}")
    return start, wall


def stop(proc, grace=0):
    """End snakemake: it may already have the signal (a process group's); SIGTERM, then SIGKILL, since a
    snakemake that gets SIGTERM while it stops can hang. Its sidecars watch its pid and follow it."""
    for step in ([lambda: None] if grace else []) + [proc.terminate, proc.kill]:
        step()
        try:
            proc.wait(timeout=grace or 10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def wait_sidecars_gone(pids, timeout=60):
    """A run's sidecars exit about 1 s after snakemake; wait, so the next run has the GPUs to itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _epoch(stamp):
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_server_log(path):
    """A sidecar log: its process(es), device, load time, ready time, and per-model request totals."""
    slot = {"pids": [], "device": None, "load_s": None, "ready_t": None, "models": {}, "first_t": None,
            "last_t": None, "compute_s": 0.0, "loads": 0}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t, pid, msg = _epoch(m.group(1)), int(m.group(2)), m.group(3)
        if pid not in slot["pids"]:
            slot["pids"].append(pid)
        if msg.startswith("pid ") and " on " in msg:
            slot["device"] = msg.rsplit(" on ", 1)[1]
        elif (r := re.match(r"ready on (\S+) after ([\d.]+) s", msg)):
            slot["device"], slot["load_s"], slot["ready_t"] = r.group(1), float(r.group(2)), t
            slot["loads"] += 1
        elif msg.startswith("embed ") and msg.endswith(" ok"):  # embed ID client=C model=M seqs=S tokens=T ...
            kv = dict(re.findall(r"(\w+)=([\w.]+)", msg))
            model = slot["models"].setdefault(kv.get("model", "?"), {"requests": 0, "seqs": 0, "tokens": 0})
            model["requests"] += 1
            model["seqs"] += int(kv.get("seqs", 0))
            model["tokens"] += int(kv.get("tokens", 0))
            slot["compute_s"] += float(kv.get("compute", "0s").rstrip("s"))
            slot["first_t"] = t if slot["first_t"] is None else slot["first_t"]
            slot["last_t"] = t
    return slot


def measure(workdir, start, wall):
    jobs = []
    for bench in sorted(workdir.glob("benchmarks/*/embed/*.tsv")):
        seconds = float(bench.read_text().splitlines()[1].split("\t")[0])
        end = bench.stat().st_mtime
        jobs.append((end - seconds, end))
    if not jobs:
        raise RunFailed(f"{workdir}: no embed benchmark files (benchmarks/*/embed/*.tsv)")
    first_start, last_end = min(s for s, _ in jobs), max(e for _, e in jobs)
    slots = {p.name.split(".")[0]: parse_server_log(p) for p in sorted(workdir.glob("logs/sidecar/*.server.log"))}
    ready = [s["ready_t"] for s in slots.values() if s["ready_t"] is not None]
    if len(ready) != len(slots) or not slots:
        raise RunFailed(f"{workdir}: a sidecar never logged 'ready' (logs/sidecar/*.server.log)")
    embed_from = max(first_start, max(ready))
    embed_s = last_end - embed_from
    totals = {}
    for s in slots.values():
        for model, m in s["models"].items():
            t = totals.setdefault(model, {"seqs": 0, "tokens": 0})
            t["seqs"] += m["seqs"]
            t["tokens"] += m["tokens"]
    rel = lambda t: None if t is None else round(t - start, 3)  # noqa: E731
    return {
        "wall_s": round(wall, 2),
        "embed_jobs": len(jobs),
        "embed_jobs_s": round(last_end - first_start, 2),
        "embed_s": round(embed_s, 2),
        "load_s": max(s["load_s"] for s in slots.values()),
        "first_embed_start_t": rel(first_start),
        "last_embed_end_t": rel(last_end),
        "sidecars": {name: {"device": s["device"], "pids": s["pids"], "loads": s["loads"], "load_s": s["load_s"],
                            "ready_t": rel(s["ready_t"]), "first_request_t": rel(s["first_t"]),
                            "last_request_t": rel(s["last_t"]), "compute_s": round(s["compute_s"], 2),
                            "models": s["models"]}
                     for name, s in slots.items()},
        "models": {m: dict(t, tokens_per_s=round(t["tokens"] / embed_s) if embed_s > 0 else None)
                   for m, t in totals.items()},
    }


def keep_logs(workdir, dest):
    """Logs, benchmarks, Snakemake's own log, config and result tables of one run, copied to `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for sub in ("logs", "benchmarks", ".snakemake/log"):
        if (workdir / sub).is_dir():
            shutil.copytree(workdir / sub, dest / sub.replace(".snakemake/", "snakemake_"))
    for pattern in ("snakemake.out", "config.yaml", "samples.tsv", "summary/run_stats.tsv", "results/*/*.txt",
                    "results/*/*.csv", "results/*/virus_contigs.tsv"):
        for path in workdir.glob(pattern):
            target = dest / path.relative_to(workdir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# --- results -----------------------------------------------------------------------------------------

def read_predictions(workdir):
    rows = {}
    for path in sorted(workdir.glob("results/*/prediction_results.txt")):
        lines = path.read_text().splitlines()[1:]
        rows[path.parent.name] = [line.split("\t") for line in lines]
    return rows


def compare(base, other):
    a, b = read_predictions(base), read_predictions(other)
    result = {"samples_match": sorted(a) == sorted(b), "rows": 0, "ids_match": True, "label_mismatches": 0,
              "max_score_diff": 0.0, "max_score_diff_at_mismatch": 0.0}
    for sample in a:
        ra, rb = a[sample], b.get(sample, [])
        result["rows"] += len(ra)
        if [r[0] for r in ra] != [r[0] for r in rb]:
            result["ids_match"] = False
            continue
        for x, y in zip(ra, rb):
            diff = max(abs(float(x[2]) - float(y[2])), abs(float(x[3]) - float(y[3])))
            result["max_score_diff"] = max(result["max_score_diff"], diff)
            if x[1] != y[1]:
                result["label_mismatches"] += 1
                result["max_score_diff_at_mismatch"] = max(result["max_score_diff_at_mismatch"], diff)
    # fast mode: a frame's vector can change in the last bits with its batch mates, so a near-tie may flip
    result["agree"] = (result["samples_match"] and result["ids_match"] and result["rows"] > 0
                       and result["max_score_diff"] <= 1e-2)
    return result


def _terminated(*_):
    raise RunFailed("terminated (SIGTERM: a time limit?)")


# --- main --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="made by bench/real_models.py --out DIR [--size ...]")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--mode", choices=("fast", "exact", "auto"),
                    help="sidecar numerics (default: fast on cuda, auto = exact on the cpu)")
    ap.add_argument("--gpus", default="1,2", help="GPUs of each run, in order (default 1,2); on the cpu every "
                    "run uses the one CPU sidecar")
    ap.add_argument("--frames", type=int, help="kept frames in all (default 32000 real, 400 tiny)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--parts", type=int, default=16, help="part files per run, over all samples (default 16)")
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--work", default="/tmp/workflow_gpus", help="scratch: input and the runs' work directories")
    ap.add_argument("--keep", required=True, help="each run's logs are copied to KEEP/<run>/")
    ap.add_argument("--out", help="JSON summary")
    ap.add_argument("--run-timeout", type=int, default=0, help="seconds per snakemake run (0: no limit)")
    args = ap.parse_args()
    args.mode = args.mode or ("fast" if args.device == "cuda" else "auto")
    args.frames = args.frames or (32000 if args.size == "real" else 400)
    gpus = [int(g) for g in args.gpus.split(",")]
    signal.signal(signal.SIGTERM, _terminated)  # a time limit: stop snakemake, keep the logs and the summary

    work, keep = Path(args.work).resolve(), Path(args.keep).resolve()
    work.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    summary = {"args": vars(args), "host": os.uname().nodename, "python": sys.version.split()[0], "runs": {}}
    t0 = time.time()
    models = find_models(args.models_dir, args.size)
    inputs = write_inputs(work / "input", args.frames, args.samples, min(16, os.cpu_count() or 1))
    write_classifier(models[2], args.size)  # torch only now, after the input's worker processes
    log(f"models {models[0].name}, {models[1].name}, {models[2].name}; input {args.frames} frames in "
        f"{args.samples} samples ({time.time() - t0:.1f} s)")
    write_wrappers(work / "bin")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    status = 0
    try:
        for i, n in enumerate(gpus):
            name = f"cpu{i + 1}" if args.device == "cpu" else f"gpu{n}" if gpus.count(n) == 1 else f"gpu{n}_{i + 1}"
            workdir = work / name
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
            config = write_config(workdir, inputs, models, args, n)
            log(f"run {name}: snakemake --cores {args.cores}, {args.device} x {n if args.device == 'cuda' else 1}")
            try:
                start, wall = run_snakemake(name, workdir, config, env, args, keep / name)
                result = measure(workdir, start, wall)
            finally:
                keep_logs(workdir, keep / name)
            pids = [p for s in result["sidecars"].values() for p in s["pids"]]
            if (left := wait_sidecars_gone(pids)):
                log(f"warning: sidecar pid(s) {left} still alive 60 s after the run")
            summary["runs"][name] = dict(result, gpus=n if args.device == "cuda" else 0)
            log(f"run {name}: wall {result['wall_s']} s, embed jobs {result['embed_jobs_s']} s, "
                f"embed after load {result['embed_s']} s, load {result['load_s']} s, "
                f"sidecars {[(k, s['device']) for k, s in result['sidecars'].items()]}")
        runs = summary["runs"]
        first = min(runs, key=lambda k: runs[k]["gpus"])  # the base: the run on the fewest GPUs (--gpus 2,1 works)
        base = runs[first]
        for name in [k for k in runs if k != first]:
            run = runs[name]
            run["vs_" + first] = dict(compare(work / first, work / name),
                                         scaling_embed=round(base["embed_s"] / run["embed_s"], 3),
                                         scaling_embed_jobs=round(base["embed_jobs_s"] / run["embed_jobs_s"], 3),
                                         scaling_wall=round(base["wall_s"] / run["wall_s"], 3))
            if not run["vs_" + first]["agree"]:
                status = 2
    except RunFailed as exc:
        summary["error"] = str(exc)
        status = 1
    finally:
        summary["total_s"] = round(time.time() - t0, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1))
            shutil.copy2(args.out, keep / "summary.json")
    if status == 1:
        print(f"workflow_gpus: {summary['error']}", file=sys.stderr)
        return 1
    print_table(summary)
    if status == 2:
        print("workflow_gpus: results of the runs disagree (see 'vs_' in the summary)", file=sys.stderr)
    return status


def print_table(summary):
    runs = summary["runs"]
    print(f"\n{'run':6} {'wall s':>8} {'embed jobs s':>13} {'load s':>7} {'embed s':>8} {'ESM tok/s':>10} "
          f"{'DNA tok/s':>10} {'frames':>7}  sidecars")
    for name, r in runs.items():
        esm, dna = r["models"].get("esm2", {}), r["models"].get("dnabert_s", {})
        devices = ",".join(f"{k}:{s['device']}" for k, s in r["sidecars"].items())
        print(f"{name:6} {r['wall_s']:8.1f} {r['embed_jobs_s']:13.1f} {r['load_s']:7.1f} {r['embed_s']:8.1f} "
              f"{esm.get('tokens_per_s') or 0:10,} {dna.get('tokens_per_s') or 0:10,} {esm.get('seqs', 0):7}  "
              f"{devices}")
    for name, first in [(k, key[3:]) for k, r in runs.items() for key in r if key.startswith("vs_")]:
        c = runs[name]["vs_" + first]
        target = (f"{'meets' if c['scaling_embed'] >= 1.8 else 'misses'} the 1.8x target; "
                  if summary["args"]["device"] == "cuda" else "")
        print(f"{name} vs {first}: scaling embed {c['scaling_embed']}x ({target}embed jobs incl. load wait "
              f"{c['scaling_embed_jobs']}x, wall {c['scaling_wall']}x); results: {c['rows']} rows, ids "
              f"{'same' if c['ids_match'] else 'DIFFER'}, {c['label_mismatches']} label mismatches "
              f"(max score diff there {c['max_score_diff_at_mismatch']:.3g}), max score diff "
              f"{c['max_score_diff']:.3g} -> {'agree' if c['agree'] else 'DISAGREE'}")


if __name__ == "__main__":
    sys.exit(main())
