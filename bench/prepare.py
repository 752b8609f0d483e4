"""Preparation benchmark: a synthetic sample through the workflow's preparation commands, timed, with the
peak resident memory of each command (docs/benchmarks.md, "Issue 13: preparation").

    python bench/prepare.py --records 1000000 --workdir /tmp/prep --cores 1 2

Runs `virnucflow shard` (the plan; for a plain sample it reads nothing), then `prepare-shard` on every
shard (`--cores` at a time, as Snakemake would), `shard-frames` on every shard and `split-part` on every
part (each part cut from the shards that hold it), `concatenate-shards` (the whole-sample id check and the
concatenation) and `count-parts`, each a process; prints one JSON object per core count: the seconds and
peak memory of each step, the serial share (`shard`, `concatenate-shards` and `count-parts`, the steps
that run once per sample), and the speed-up over the first core count. The sample is coding-like (stop-free codons), so most chunks keep a frame and
the split has real work.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


def write_sample(path, records, codons, seed=1):
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(records):
            out.write(f">read{i}\n{''.join(rng.choices(SENSE, k=codons))}\n")


def run_all(commands, cores):
    """Run the commands, `cores` at a time; return the largest ru_maxrss (MB) among them."""
    pending, running, peak = list(commands), {}, 0
    while pending or running:
        while pending and len(running) < cores:
            proc = subprocess.Popen([sys.executable, "-m", "virnucflow", *pending.pop(0)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[proc.pid] = proc
        pid, status, usage = os.wait4(-1, 0)
        proc = running.pop(pid, None)
        if proc is None:
            continue
        if status != 0:
            raise SystemExit(f"{proc.args[3:]} failed: {proc.stderr.read().decode()[-2000:]}")
        peak = max(peak, usage.ru_maxrss / 1024)
    return peak


def split_commands(out, n, records_per_file):
    """One `split-part` per part, from the shards' frame counts, as the workflow's split_part jobs."""
    from virnucflow.split import part_count, part_span

    counts = [json.loads((out / f"{i}.frames").read_text())["kept_frames"] for i in range(1, n + 1)]
    commands = []
    for k in range(1, part_count(sum(counts), records_per_file) + 1):
        first, last, _ = part_span(counts, k, records_per_file)
        shards = range(first, last + 1)
        commands.append(["split-part", "--part", str(k), "--nucleotide-shards",
                         *(str(out / f"{i}.nucleotide") for i in shards),
                         "--protein-shards", *(str(out / f"{i}.protein") for i in shards),
                         "--frames-before", *(str(out / f"{i}.frames") for i in range(1, first)),
                         "--records-per-file", str(records_per_file), "--nucleotide",
                         str(out / f"parts/output_{k}.fa"), "--protein", str(out / f"parts/output_{k}.faa")])
    return commands


def prepare(fasta, out, cores, shard_mb, records_per_file, chunk_size):
    from virnucflow.shards import shard_bytes, shard_count

    out.mkdir(parents=True)
    n = shard_count(fasta.stat().st_size, shard_bytes(shard_mb))
    steps = {"shard": [["shard", "--shard-mb", str(shard_mb), str(fasta), str(out / "shards")]]}
    names = ("chunked", "nucleotide", "protein", "ids", "counts")
    steps["prepare-shard"] = [
        ["prepare-shard", "--size", str(chunk_size), "--shard", str(i), str(out / "shards"),
         *(arg for name in names for arg in (f"--{name}", str(out / f"{i}.{name}")))]
        for i in range(1, n + 1)
    ]
    targets = {"chunked": "chunked.fa", "nucleotide": "identified_nucleotide.fa", "protein": "identified_protein.faa"}
    steps["shard-frames"] = [["shard-frames", "--counts", str(out / f"{i}.counts"), "--output",
                              str(out / f"{i}.frames")] for i in range(1, n + 1)]
    steps["split-part"] = lambda: split_commands(out, n, records_per_file)
    steps["concatenate-shards"] = [["concatenate-shards", *(
        arg for name in names
        for arg in (*((f"--{name}", str(out / targets[name])) if name in targets else ()),
                    f"--{name}-shards", *(str(out / f"{i}.{name}") for i in range(1, n + 1)))
    )]]
    steps["count-parts"] = [["count-parts", "--protein", str(out / "identified_protein.faa"),
                             "--records-per-file", str(records_per_file), "--output", str(out / "parts.json")]]
    result = {"cores": cores, "shards": n, "steps": {}}
    started = time.monotonic()
    for name, commands in steps.items():
        t0 = time.monotonic()
        peak = run_all(commands() if callable(commands) else commands, cores)
        result["steps"][name] = {"seconds": round(time.monotonic() - t0, 1), "max_rss_mb": round(peak, 1)}
    result["seconds"] = round(time.monotonic() - started, 1)
    serial = sum(result["steps"][name]["seconds"] for name in ("shard", "concatenate-shards", "count-parts"))
    result["serial_share"] = round(serial / result["seconds"], 3)
    result["max_rss_mb"] = max(step["max_rss_mb"] for step in result["steps"].values())
    result["parts"] = json.loads((out / "parts.json").read_text())["parts"]
    with open(out / "identified_protein.faa") as handle:
        result["kept_frames"] = sum(1 for line in handle if line.startswith(">"))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--codons", type=int, default=100, help="record length in codons (default 100: 300 bp)")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch directory (not in the repository)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-mb", type=float, default=32)
    parser.add_argument("--records-per-file", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=300)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    fasta = args.workdir / "sample.fa"
    t0 = time.monotonic()
    write_sample(fasta, args.records, args.codons)
    print(json.dumps({"records": args.records, "bytes": fasta.stat().st_size,
                      "generated_in_s": round(time.monotonic() - t0, 1)}), flush=True)
    first = None
    for cores in args.cores:
        out = args.workdir / f"cores{cores}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        result = prepare(fasta, out, cores, args.shard_mb, args.records_per_file, args.chunk_size)
        result["records_per_s"] = round(args.records / result["seconds"])
        first = first or result
        result["speed_up"] = round(first["seconds"] / result["seconds"], 2)
        result["speed_up_per_core"] = round(result["speed_up"] * first["cores"] / cores, 2)
        print(json.dumps(result), flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=True)


if __name__ == "__main__":
    main()
