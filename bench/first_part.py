"""How soon the first part reaches a sidecar on a large sample, against a checkout of earlier code.

One `snakemake --cores N` run per checkout, in a fresh work directory, on one synthetic sample of `--records`
300 bp records (bench/prepare.py's coding-like reads), with the models of `--models-dir` (bench/real_models.py's
files, `--size tiny` on a CPU). Every 0.1 s it notes when the first embed job started (its log file
appears), when the first part's vectors exist (its provenance record), how many shard jobs had started by
then, and when the sample's parts were counted (parts.json: the whole sample prepared and checked), if that came
first. Once a part is embedded the run is stopped (the rest is the embedding, not measured here).

    python bench/first_part.py --records 1000000 --models-dir /tmp/tm --size tiny --device cpu --cores 2 \\
        --against /tmp/old_checkout --out first_part.json

Prints one JSON object per checkout and the ratio of their times to the first part.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import e2e  # noqa: E402 - the config writer
import prepare  # noqa: E402 - the synthetic sample
import workflow_gpus as wf  # noqa: E402 - the wrappers and the stopping of snakemake


def run(checkout, fasta, args, work, name):
    """One run of the workflow of `checkout`; the times (s since snakemake started) of its first part."""
    workdir = work / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = SimpleNamespace(parts=1, records_per_file=args.records_per_file, device=args.device, mode=None,
                               gpus=None, demo=False, models_dir=args.models_dir, size=args.size)
    config = e2e.write_config(workdir, settings, {"big": (fasta, 0)})
    text = config.read_text() + f"shard_mb: {args.shard_mb}\n"
    config.write_text(text)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", str(args.cores)]
    out = workdir / "results" / "big"
    marks = {"first_embed_started": lambda: any((workdir / "logs/big/embed").glob("output_*.log")),
             "first_part_embedded": lambda: any((out / "provenance").glob("output_*.json")),
             "preparation_done": lambda: (out / "parts.json").exists()}
    seen, shards_at_first = {}, None
    start = time.time()
    with open(workdir / "snakemake.out", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            while "first_part_embedded" not in seen and proc.poll() is None and time.time() - start < args.timeout:
                for name, happened in marks.items():
                    if name not in seen and happened():
                        seen[name] = round(time.time() - start, 1)
                        if name == "first_embed_started":
                            shards_at_first = len(list((workdir / "logs/big/prepare").glob("shard_*.log")))
                time.sleep(0.1)
        finally:
            wf.stop(proc, grace=10)
    return {"checkout": str(checkout), **seen,
            "shard_jobs_started_at_first_embed": shards_at_first}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--models-dir", required=True, help="bench/real_models.py's models")
    ap.add_argument("--size", choices=("real", "tiny"), default="tiny")
    ap.add_argument("--device", choices=("cuda", "cpu", "auto"), default="cpu")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--shard-mb", type=float, default=16)
    ap.add_argument("--records-per-file", type=int, default=10_000)
    ap.add_argument("--against", type=Path, help="a checkout of earlier code, run the same way first")
    ap.add_argument("--work", type=Path, default=Path("/tmp/virnucflow_first_part"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    wf.write_wrappers(args.work / "bin")
    fasta = args.work / "big.fa"
    if not fasta.exists() or fasta.stat().st_size == 0:
        prepare.write_sample(fasta, args.records, 100)
    results = []
    for i, checkout in enumerate(([args.against] if args.against else []) + [REPO]):
        results.append(run(checkout.resolve(), fasta, args, args.work, f"run_{i}"))
        print(json.dumps(results[-1]), flush=True)
    from virnucflow.shards import shard_bytes, shard_count

    size = fasta.stat().st_size
    summary = {"records": args.records, "bytes": size, "shards": shard_count(size, shard_bytes(args.shard_mb)),
               "cores": args.cores, "runs": results}
    if len(results) == 2 and all("first_embed_started" in r for r in results):
        summary["first_embed_ratio"] = round(results[1]["first_embed_started"] / results[0]["first_embed_started"], 3)
        print(f"first part to a sidecar: {results[0]['first_embed_started']} s -> "
              f"{results[1]['first_embed_started']} s ({summary['first_embed_ratio']}x)")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
