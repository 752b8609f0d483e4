"""Helpers for tests that run the real workflow through the `snakemake` command line in a scratch directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "resources" / "demo"


def write_config(workdir, **overrides):
    """A demo config in `workdir` whose sample sheet points at the bundled demo FASTA files."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sheet = workdir / "samples.tsv"
    sheet.write_text(
        "sample\tfasta\n"
        f"phage_mix\t{DEMO_DATA / 'phage_mix.fa'}\n"
        f"reads_gz\t{DEMO_DATA / 'reads.fa.gz'}\n"
    )
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["samples"] = str(sheet)
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DEMO_RUN_SAMPLES = ("phage_mix", "reads_gz", "nothing")


def write_demo_run_config(workdir):
    """The config of the demo run that tests share (conftest.demo_run): the demo's two samples and a third,
    `nothing`, whose records keep no frame (all N, and one too short to chunk); a sidecar on the CPU;
    intermediates removed; the report's score tracks along the top 5 records."""
    config = write_config(workdir, embedding={"sidecar": True, "device": "cpu"}, report={"top_contigs": 5})
    fasta = Path(workdir) / "ambiguous.fa"
    fasta.write_text(">n1\n" + "N" * 700 + "\n>too_short\nAC\n")
    with open(Path(workdir) / "samples.tsv", "a") as sheet:
        sheet.write(f"nothing\t{fasta}\n")
    return config


def _snakemake_command(workdir, args, config=None, env=None):
    """The command line and environment of a snakemake run in `workdir` (this venv's bin first on PATH)."""
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config or Path(workdir) / "config.yaml"), *args,
    ]
    run_env = dict(os.environ, **(env or {}))
    run_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + run_env.get("PATH", "")
    return cmd, run_env


def snakemake(workdir, *args, config=None, timeout=600, check=True, env=None):
    cmd, run_env = _snakemake_command(workdir, args, config, env)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=run_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def start_snakemake(workdir, *args, append=False):
    """A snakemake run started in the background, its output in `workdir`/snakemake.out (appended to, or
    started anew)."""
    cmd, run_env = _snakemake_command(workdir, args)
    log = open(Path(workdir) / "snakemake.out", "a" if append else "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env, text=True)


def job_counts(dry_run_output):
    """The 'Job stats' table of a dry run as {rule: count}; {} when nothing is to be done."""
    if "Job stats:" not in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit() and row[0] != "total"}


def build_report(workdir, name="report.html", config=None):
    """`snakemake --report <name>` after a run (it reads the run's metadata); returns the report's path."""
    snakemake(workdir, "--report", name, config=config)
    return Path(workdir) / name


# --- SLURM (tests/test_slurm.py): the single-node cluster that .ci/slurm/setup.sh starts ---------------

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
LOCAL_PROFILE = REPO / "workflow" / "profiles" / "local"


def need_cluster(problem, what):
    """Skip the caller's tests where the cluster they need is missing (`problem` says why), but fail them
    under CI=true, where .ci/run starts it."""
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but no {what}: {problem}")
        pytest.skip(problem)


def slurm_problem():
    """None when a SLURM cluster answers here with an idle or busy node, else why not."""
    import shutil

    if shutil.which("sinfo") is None:
        return "SLURM is not installed here (no sinfo); .ci/slurm/setup.sh installs and starts one"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"SLURM does not answer with a usable node (sinfo: {(proc.stdout + proc.stderr).strip()!r}); run .ci/slurm/setup.sh"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


def slurm_profile(dest, **changes):
    """The repository's SLURM profile, copied to `dest` with the changes that this tiny cluster needs.

    Each change is `key=value` at the top level, or `set_resources={rule: {resource: value}}`, merged."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    for rule, values in changes.pop("set_resources", {}).items():
        profile.setdefault("set-resources", {}).setdefault(rule, {}).update(values)
    for key, value in changes.pop("default_resources", {}).items():
        profile.setdefault("default-resources", {})[key] = value
    profile.update({k.replace("_", "-"): v for k, v in changes.items()})
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def slurm_jobids(snakemake_output):
    """SLURM job ids of the jobs that the executor plugin submitted, from Snakemake's output."""
    import re

    return re.findall(r"has been submitted with SLURM jobid (\d+)", snakemake_output)


def slurm_config(key):
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    return None


def jobcomp_records():
    """slurmctld's job completion log (JobCompType=jobcomp/filetxt) as {job id: fields}, the last record
    of each id."""
    path = slurm_config("JobCompLoc")
    records = {}
    if not path or not Path(path).is_file():
        return records
    for line in Path(path).read_text().splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "JobId" in fields:
            records[fields["JobId"]] = fields
    return records


def job_state(jobid):
    """The job's state from squeue (finished jobs stay listed for MinJobAge), or None."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(jobid), "-o", "%T"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return out or None


def orf_workload(workdir, n_frames, seed=11, **overrides):
    """A config whose one sample keeps exactly `n_frames` frames: with records_per_file=1, that many parts."""
    import itertools
    import random

    from virnucflow.translation import kept_frames

    rng = random.Random(seed)
    sense = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in ("TAA", "TAG", "TGA")]
    records, total = [], 0
    while total < n_frames:
        seq = "".join(rng.choice(sense) for _ in range(100))
        frames = len(kept_frames(f"orf{len(records)}_chunk_1", seq))
        if total + frames > n_frames:
            continue
        records.append((f"orf{len(records)}", seq))
        total += frames
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fasta = workdir / "orfs.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    overrides.setdefault("records_per_file", 1)
    overrides.setdefault("shard_mb", 64)  # one shard: these runs are about the per-part jobs
    config = write_config(workdir, chunk_size=300, **overrides)
    (workdir / "samples.tsv").write_text(f"sample\tfasta\norfs\t{fasta}\n")
    return config


def pid_alive(pid):
    """Whether a local process lives; a zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout, step=0.2):
    """Poll `predicate` until it holds or `timeout` seconds pass; return its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
