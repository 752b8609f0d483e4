"""Preparation benchmark: a synthetic sample through the workflow's preparation commands, timed, with the
peak resident memory of each command (docs/benchmarks.md, "Issue 13: preparation").

    python bench/prepare.py --records 1000000 --workdir /tmp/prep --cores 1 16 --shard-mb 5

The commands of the workflow's preparation jobs, each a process, `--cores` at a time, in the order that
Snakemake's scheduler gives them: `virnucflow shard` (the plan; for a plain sample it reads nothing), then
`prepare-shard` on every shard in input order; `shard-frames` on each shard as soon as that shard is
prepared; `concatenate-shards` (the whole-sample id check and the concatenation) once every shard is;
`count-parts` once every shard's frames are counted; `split-part` on every part (each cut from the shards
that hold it): those that end in one of the first EARLY_SHARDS shards once the shards up to it are counted,
the others after count-parts. Among the jobs that may run, those of the rules with priority 1 in the
workflow (shard-frames, split-part) go first, then concatenate-shards and count-parts, then the shards in
input order. Prints one JSON object per core count: each step's span (its first start to its last end; the
steps overlap) and peak memory, the wall time, the share of the cores' time that jobs used, the speed-up
over the first core count, and for more than one core what the machine allows: how much slower a CPU-bound
Python process runs with as many at once than alone (`machine_slowdown`; its inverse is the best speed-up
per core that jobs of that kind can reach). The sample is coding-like (stop-free codons), so most chunks keep
a frame and the split has real work. `--code DIR` runs the jobs with another commit's source tree (a `git
archive`), under this script's scheduling: the code before against after on the same machine.
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


def run_dag(jobs, cores, on_done=None, cwd=None):
    """Run the jobs, `cores` at a time: each job is {"step", "argv", "after" (job names), "priority"}, started
    once the jobs it comes after have ended, the highest priority first, then the order given; `on_done(name)`
    may return more jobs; `cwd`: the jobs' directory (its virnucflow comes first on their path). Returns
    {step: (first start, last end, peak ru_maxrss in MB)} and the summed seconds of all jobs."""
    pending, running, done, steps, busy = dict(jobs), {}, set(), {}, 0.0
    while pending or running:
        ready = sorted((name for name, job in pending.items() if set(job["after"]) <= done),
                       key=lambda name: -pending[name]["priority"])
        for name in ready[:cores - len(running)]:
            job = pending.pop(name)
            proc = subprocess.Popen([sys.executable, "-m", "virnucflow", *job["argv"]],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
            running[proc.pid] = (name, job, proc, time.monotonic())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, job, proc, start = running.pop(pid)
        end = time.monotonic()
        if status != 0:
            raise SystemExit(f"{job['argv']} failed: {proc.stderr.read().decode()[-2000:]}")
        first, last, peak = steps.get(job["step"], (start, end, 0.0))
        steps[job["step"]] = (min(first, start), max(last, end), max(peak, usage.ru_maxrss / 1024))
        busy += end - start
        done.add(name)
        pending.update((on_done and on_done(name)) or {})
    return steps, busy


def split_commands(out, counts, parts, records_per_file):
    """One `split-part` per part in `parts`, from the kept-frame counts of the shards from 1 on (as many as
    those parts need), as the workflow's split_part jobs."""
    from virnucflow.split import part_span

    commands = {}
    for k in parts:
        first, last, _ = part_span(counts, k, records_per_file)
        shards = range(first, last + 1)
        commands[k] = ["split-part", "--part", str(k), "--nucleotide-shards",
                       *(str(out / f"{i}.nucleotide") for i in shards),
                       "--protein-shards", *(str(out / f"{i}.protein") for i in shards),
                       "--frames-before", *(str(out / f"{i}.frames") for i in range(1, first)),
                       "--records-per-file", str(records_per_file), "--nucleotide",
                       str(out / f"parts/output_{k}.fa"), "--protein", str(out / f"parts/output_{k}.faa")]
    return commands


CPU_WORK = "import time; t = time.perf_counter(); sum(i * i for i in range(3_000_000)); print(time.perf_counter() - t)"


def machine_slowdown(cores):
    """How much slower one CPU-bound Python process runs with `cores` of them at once than alone (the
    mean of each's own time): what the machine itself allows, whatever the jobs are."""
    def run(n):
        procs = [subprocess.Popen([sys.executable, "-c", CPU_WORK], stdout=subprocess.PIPE) for _ in range(n)]
        return sum(float(proc.communicate()[0]) for proc in procs) / n

    alone = min(run(1) for _ in range(3))
    together = min(run(cores) for _ in range(3))
    return round(together / alone, 3)


def prepare(fasta, out, cores, shard_mb, records_per_file, chunk_size, code=None):
    out.mkdir(parents=True)
    n = int(subprocess.run(  # the shard count of the code that runs the jobs (its sharding rule)
        [sys.executable, "-c", "import sys; from virnucflow.shards import shard_bytes, shard_count; "
         "print(shard_count(int(sys.argv[1]), shard_bytes(float(sys.argv[2]))))",
         str(fasta.stat().st_size), str(shard_mb)], cwd=code, check=True, capture_output=True, text=True).stdout)
    shards = range(1, n + 1)
    names = ("chunked", "nucleotide", "protein", "ids", "counts")
    targets = {"chunked": "chunked.fa", "nucleotide": "identified_nucleotide.fa", "protein": "identified_protein.faa"}

    def job(step, argv, after=(), priority=0.0):
        return {"step": step, "argv": argv, "after": list(after), "priority": priority}

    jobs = {"shard": job("shard", ["shard", "--shard-mb", str(shard_mb), str(fasta), str(out / "shards")])}
    for i in shards:  # the workflow's priorities (common.smk): shards in input order, below everything else
        jobs[f"prepare-shard {i}"] = job("prepare-shard", [
            "prepare-shard", "--size", str(chunk_size), "--shard", str(i), str(out / "shards"),
            *(arg for name in names for arg in (f"--{name}", str(out / f"{i}.{name}")))], ["shard"], -1 - i / (i + 1))
        jobs[f"shard-frames {i}"] = job("shard-frames", ["shard-frames", "--counts", str(out / f"{i}.counts"),
                                                         "--output", str(out / f"{i}.frames")],
                                        [f"prepare-shard {i}"], 1)
    jobs["concatenate-shards"] = job("concatenate-shards", ["concatenate-shards", *(
        arg for name in names
        for arg in (*((f"--{name}", str(out / targets[name])) if name in targets else ()),
                    f"--{name}-shards", *(str(out / f"{i}.{name}") for i in shards))
    )], [f"prepare-shard {i}" for i in shards])
    jobs["count-parts"] = job("count-parts", ["count-parts", "--frames", *(str(out / f"{i}.frames") for i in shards),
                                              "--records-per-file", str(records_per_file),
                                              "--output", str(out / "parts.json")],
                              [f"shard-frames {i}" for i in shards])

    from virnucflow.split import EARLY_SHARDS, part_count, parts_completed_by

    counts, cut = {}, set()

    def parts(name):
        """The split-part jobs that the workflow can start once job `name` has ended: the parts that end in
        each of the first EARLY_SHARDS shards once the shards up to it are counted (run_info asks for them),
        every other part after count-parts."""
        step, _, shard = name.partition(" ")
        if step == "shard-frames":
            counts[int(shard)] = json.loads((out / f"{shard}.frames").read_text())["kept_frames"]
        framed = []  # the counts of shards 1, 2, ... as far as they are all known
        while len(framed) + 1 in counts:
            framed.append(counts[len(framed) + 1])
        if step == "count-parts":
            wanted = range(1, part_count(sum(framed), records_per_file) + 1)
        elif step == "shard-frames":
            wanted = [k for last in range(1, min(len(framed), EARLY_SHARDS) + 1)
                      for k in parts_completed_by(framed[:last], records_per_file)]
        else:
            return {}
        new = [k for k in wanted if k not in cut]
        cut.update(new)
        return {f"split-part {k}": job("split-part", argv, priority=1)
                for k, argv in split_commands(out, framed, new, records_per_file).items()}

    started = time.monotonic()
    steps, busy = run_dag(jobs, cores, parts, code)
    wall = time.monotonic() - started
    result = {"cores": cores, "shards": n, "steps": {
        step: {"seconds": round(last - first, 1), "max_rss_mb": round(peak, 1)}
        for step, (first, last, peak) in steps.items()}}
    result["seconds"] = round(wall, 1)
    result["core_busy_share"] = round(busy / (cores * wall), 3)
    result["max_rss_mb"] = max(step["max_rss_mb"] for step in result["steps"].values())
    if cores > 1:
        result["machine_slowdown"] = machine_slowdown(cores)
        result["machine_per_core_ceiling"] = round(1 / result["machine_slowdown"], 3)
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
    parser.add_argument("--shard-mb", type=float, default=5,
                        help="the workflow's shard_mb (default 5: 66 shards of a 1M-record sample, 4 per core on 16)")
    parser.add_argument("--records-per-file", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=300)
    parser.add_argument("--code", type=Path, help="run the jobs with the virnucflow of this source tree (a `git "
                        "archive` of another commit; the scheduling stays this script's): before against after")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()  # the jobs of --code run in its directory
    args.code = args.code and args.code.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    fasta = args.workdir / f"sample_{args.records}x{args.codons}.fa"  # kept: a second run times the same file
    t0 = time.monotonic()
    if not fasta.exists():
        write_sample(fasta, args.records, args.codons)
    print(json.dumps({"records": args.records, "bytes": fasta.stat().st_size,
                      "generated_in_s": round(time.monotonic() - t0, 1)}), flush=True)
    first = None
    for cores in args.cores:
        out = args.workdir / f"cores{cores}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        result = prepare(fasta, out, cores, args.shard_mb, args.records_per_file, args.chunk_size, args.code)
        result["code"] = str(args.code or "this")
        result["records_per_s"] = round(args.records / result["seconds"])
        first = first or result
        result["speed_up"] = round(first["seconds"] / result["seconds"], 2)
        result["speed_up_per_core"] = round(result["speed_up"] * first["cores"] / cores, 2)
        print(json.dumps(result), flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=True)


if __name__ == "__main__":
    main()
