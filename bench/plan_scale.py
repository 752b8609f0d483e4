"""How long Snakemake takes to plan a run of many parts, and how many jobs it plans (docs/scaling.md).

For each part count N, a scratch work directory holds one sample whose preparation is already done: the
sample's FASTA, its chunked and translated files, a `parts.json` that says N (the `count_parts` checkpoint's
output) and N empty part files, each written after what it is made from, so that Snakemake takes them as up
to date. The demo models are empty stand-ins (the demo config makes Snakemake skip the model checks). Then
`snakemake --dry-run` is timed: it builds the whole DAG past the checkpoint, as the real run does after
preparation. Nothing is embedded.

    python bench/plan_scale.py --parts 10000 100000 [--profile workflow/profiles/slurm] [--group-components 50]

Prints one JSON line per part count: planning seconds, peak memory of Snakemake, and the jobs per rule.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def fake_prepared_sample(workdir, parts):
    """A one-sample work directory whose preparation is done and whose checkpoint says `parts` parts."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    for path in [config["models"]["esm2"], *config["models"]["classifiers"].values()]:
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).touch()
    (workdir / config["models"]["dnabert_s"]).mkdir(parents=True, exist_ok=True)
    (workdir / "big.fa").write_text(">r1\nACGT\n")
    (workdir / "samples.tsv").write_text("sample\tfasta\nbig\tbig.fa\n")
    config["samples"] = "samples.tsv"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    results = workdir / "results/big"
    results.mkdir(parents=True)
    time.sleep(0.01)
    for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa"):
        (results / name).touch()
        time.sleep(0.01)
    (results / "parts.json").write_text(json.dumps({"parts": parts}) + "\n")
    (results / "parts").mkdir()
    for k in range(1, parts + 1):
        (results / f"parts/output_{k}.fa").touch()
        (results / f"parts/output_{k}.faa").touch()
    os.utime(results / "parts")  # the directory output is newer than its inputs


def job_counts(output):
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def plan(parts, profile=None, group_components=None):
    with tempfile.TemporaryDirectory(prefix="virnucflow-plan-") as tmp:
        workdir = Path(tmp)
        fake_prepared_sample(workdir, parts)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--dry-run", "--cores", "2", "--quiet", "rules"]
        if profile:
            cmd += ["--workflow-profile", str(profile)]
        if group_components:
            cmd += ["--groups", "embed=part", "merge=part", "--group-components", f"part={group_components}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"plan_scale: snakemake failed for {parts} parts:\n{proc.stderr[-3000:]}")
        out = proc.stdout + proc.stderr
        counts = job_counts(out)
        groups = len(set(re.findall(r"group job \S+ \(jobs in lexicogr\. order\)|groupid: (\S+)", out)))
        return {"parts": parts, "profile": str(profile) if profile else None, "group_components": group_components,
                "plan_s": round(seconds, 1), "cpu_s": round(after.ru_utime - before.ru_utime, 1),
                "max_rss_mb": round(after.ru_maxrss / 1024), "jobs": counts, "groups_seen": groups}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--profile", help="a workflow profile to plan with (e.g. workflow/profiles/slurm)")
    p.add_argument("--group-components", type=int, help="group embed and merge jobs, this many parts per group")
    ns = p.parse_args()
    for parts in ns.parts:
        print(json.dumps(plan(parts, ns.profile, ns.group_components)), flush=True)


if __name__ == "__main__":
    main()
