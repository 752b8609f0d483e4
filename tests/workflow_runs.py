"""Helpers for tests that run the real workflow through the `snakemake` command line in a scratch directory."""

import os
import subprocess
import sys
from pathlib import Path

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


def snakemake(workdir, *args, config=None, timeout=600, check=True, env=None):
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config or Path(workdir) / "config.yaml"), *args,
    ]
    run_env = dict(os.environ, **(env or {}))
    bindir = str(Path(sys.executable).parent)
    run_env["PATH"] = bindir + os.pathsep + run_env.get("PATH", "")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=run_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def build_report(workdir, name="report.html", config=None):
    """`snakemake --report <name>` after a run (it reads the run's metadata); returns the report's path."""
    snakemake(workdir, "--report", name, config=config)
    return Path(workdir) / name
