"""`virnucflow run`: FASTA files in, results out, through the packaged Snakemake workflow in one command.

It writes OUTDIR/config.yaml and OUTDIR/samples.tsv, then runs `python -m snakemake` on the workflow
that ships with this package, in OUTDIR. The config starts from the workflow's own config/config.yaml
(real models) or config/demo.yaml (`--demo-models`), and is checked against the workflow's config
schema before anything is written. Each file is replaced atomically, and only when its content
changes: a second run with the same arguments finds everything up to date and runs nothing, and a run
with other inputs or settings reruns what they change.

The workflow (Snakefile, workflow/, config/) is found beside the package in a checkout or an editable
install, and in `virnucflow/_pipeline/` in an installed copy (pyproject.toml ships it there).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from virnucflow import fetch
from virnucflow.fingerprint import ORIGINAL_CLASSIFIER_BLOBS
from virnucflow.atomic import atomic_path
from virnucflow.embedding_settings import EmbeddingSettings
from virnucflow.errors import InputError
from virnucflow.workflow_files import workflow_root

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".ffn", ".fsa")
COMPRESSED_SUFFIXES = (".gz",)  # what virnucflow.fasta reads besides plain text
CONFIG_NAME, SHEET_NAME = "config.yaml", "samples.tsv"
EXIT_USAGE = 2
CONFIG_HEADER = ("# Written by `virnucflow run` from its options, and rewritten when they change. The keys are\n"
                 "# those of the workflow's config/README.md; `snakemake --configfile` takes this file too.\n")


def setting_field(name):
    """The EmbeddingSettings field `name`: its help and choices are the command's."""
    return {f.name: f for f in dataclasses.fields(EmbeddingSettings)}[name]


def add_arguments(p):
    p.add_argument("-i", "--input", action="append", required=True, metavar="FASTA",
                   help="a sample's FASTA, plain or gzipped (repeat for more samples; the file name, without "
                        f"{'/'.join(FASTA_SUFFIXES + COMPRESSED_SUFFIXES)}, is the sample name)")
    p.add_argument("-o", "--outdir", required=True, help="the run's directory: config, results, logs")
    p.add_argument("--chunk-size", type=int, required=True, help="300 or 500 (must match the classifier)")
    models = p.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="DIR", help="the models, as `virnucflow fetch-models --dest DIR` "
                        "lays them out")
    models.add_argument("--demo-models", action="store_true", help="tiny random models made by the workflow: "
                        "every step runs, the scores mean nothing")
    for name in ("mode", "device"):
        meta = setting_field(name).metadata
        p.add_argument(f"--{name}", choices=meta["choices"], help=meta["help"] + " (default: the config's)")
    p.add_argument("--gpus", metavar="LIST", help="GPU ordinals to run one sidecar each on, such as 0,1 "
                   "(default: every visible GPU); sets --device auto unless --device is given")
    p.add_argument("--cores", help="CPU cores for the jobs (default: all, or the profile's)")
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would run, run nothing")
    p.add_argument("--profile", metavar="P", help="a Snakemake profile directory, or the workflow's own: "
                   "local or slurm")


# ---- the pure parts: names, options, the config and the sample sheet --------------------------------


def sample_name(path) -> str:
    """The sample name of a FASTA file: its name without the FASTA and compression suffixes."""
    name = Path(path).name
    for suffixes in (COMPRESSED_SUFFIXES, FASTA_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


def parse_gpus(text):
    """`0,1` -> [0, 1]; None -> None."""
    if text is None:
        return None
    try:
        gpus = [int(item) for item in text.split(",")]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise InputError(f"--gpus {text!r}: give distinct GPU ordinals separated by commas, such as --gpus 0,1")
    return gpus


def parse_cores(text, profile=None):
    """The --cores to pass: the one given, else all of them (unless a profile says how many)."""
    if text is None:
        return None if profile else "all"
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--cores {text!r}: give a number of cores (1 or more) or all")
    return text


def samples(inputs, root) -> dict:
    """{sample name: absolute FASTA path} of the inputs, in order; each name valid and given once."""
    schema = _yaml(root / "workflow" / "schemas" / "samples.schema.yaml")["properties"]["sample"]
    out = {}
    for given in inputs:
        path = Path(given).expanduser()
        if not path.is_file():
            raise InputError(f"{given}: no such FASTA file; check the path given with -i")
        if any(c in str(path.resolve()) for c in "\t\n\r"):
            raise InputError(f"{given}: the path holds a tab or a line break; rename the file")
        name = sample_name(path)
        _check(name, schema, f"{given}: the sample name {name!r} from its file name is not a valid name "
               f"({schema['description']}); rename the file or link it under such a name")
        if name in out:
            raise InputError(f"{given}: the sample name {name!r} is also that of {out[name]}; give each sample's "
                             "FASTA a different file name")
        out[name] = str(path.resolve())
    return out


def sample_sheet(samples_) -> str:
    return "sample\tfasta\n" + "".join(f"{name}\t{path}\n" for name, path in samples_.items())


def build_config(args, root) -> dict:
    """The run's config: the workflow's config/config.yaml or config/demo.yaml, with the command's settings.
    Checked against the workflow's config schema (a mistake is one InputError line)."""
    config = _yaml(root / "config" / ("demo.yaml" if args.demo_models else "config.yaml"))
    config["samples"] = SHEET_NAME
    config["chunk_size"] = args.chunk_size
    if args.models:
        config["models"].update(model_paths(args.models, args.chunk_size))
    embedding = config.setdefault("embedding", {})
    gpus = parse_gpus(args.gpus)
    device = args.device or ("auto" if gpus is not None else None)  # the demo's config says cpu
    for key, value in (("mode", args.mode), ("device", device), ("gpus", gpus)):
        if value is not None:
            embedding[key] = value
    from virnucflow.config_check import config_problems

    problems = config_problems(copy.deepcopy(config), _yaml(root / "workflow" / "schemas" / "config.schema.yaml"))
    if problems:
        raise InputError(f"{problems[0]} (fix the option that sets it)")
    return config


def model_paths(models_dir, chunk_size) -> dict:
    """The `models` config keys of a directory that `virnucflow fetch-models --dest DIR` filled."""
    base = Path(models_dir).expanduser().resolve()
    fix = f"fetch them with `virnucflow fetch-models --dest {models_dir}`, or give the directory that holds them"
    if not base.is_dir():
        raise InputError(f"--models {models_dir}: no such directory; {fix}")
    keys = {"esm2": str(base / fetch.ESM2_PATH), "dnabert_s": str(base / fetch.DNABERT_DIR),
            "classifiers": {name.split("_")[0]: str(base / name) for name in ORIGINAL_CLASSIFIER_BLOBS},
            "download_dir": str(base)}
    for path in (keys["esm2"], keys["dnabert_s"], keys["classifiers"].get(str(chunk_size))):
        if path and not Path(path).exists():
            raise InputError(f"--models {models_dir}: {path} is missing; {fix}")
    return keys


def snakemake_command(root, outdir, cores, dry_run=False, profile=None, extra=()) -> list:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(outdir),
           "--configfile", str(Path(outdir) / CONFIG_NAME)]
    if cores:
        cmd += ["--cores", str(cores)]
    if dry_run:
        cmd.append("--dry-run")
    if profile:
        own = root / "workflow" / "profiles" / profile
        cmd += ["--profile", str(own) if not Path(profile).is_dir() and own.is_dir() else profile]
    return cmd + list(extra)


def write_if_changed(path, text) -> bool:
    """Replace `path` atomically with `text` unless it holds that already; True when it was written."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


# ---- the command -------------------------------------------------------------------------------------


def main(args) -> int:
    try:
        return _run(args)
    except InputError as exc:
        print(f"virnucflow run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def prepare(args):
    """Check the command's input and write the run's config and sample sheet (only what changed):
    (the snakemake command line, the run's directory, {sample: FASTA}). Bad input writes nothing."""
    root = workflow_root()
    if not (args.models or args.demo_models):
        raise InputError("give the models: --models DIR (fetched with `virnucflow fetch-models --dest DIR`), or "
                         "--demo-models for the demo")
    outdir = Path(args.outdir).expanduser().resolve()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"-o {args.outdir} is a file; give a directory (new or of an earlier run)")
    cores = parse_cores(args.cores, args.profile)
    runs = samples(args.input, root)
    config = build_config(args, root)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        write_if_changed(outdir / SHEET_NAME, sample_sheet(runs))
        write_if_changed(outdir / CONFIG_NAME, CONFIG_HEADER + _yaml_text(config))
    except OSError as exc:
        raise InputError(f"-o {args.outdir}: cannot write there ({exc.strerror}); give a writable directory") from None
    cmd = snakemake_command(root, outdir, cores, args.dry_run, args.profile, getattr(args, "snakemake_args", ()))
    return cmd, outdir, runs


def _run(args) -> int:
    cmd, outdir, runs = prepare(args)
    print(f"virnucflow run: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    # the rules' `virnucflow` and `sidecar` commands are this installation's
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    started = time.time()
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        log = newest_log(outdir, started)
        where = f"its log is {log}" if log else "see its output above"
        print(f"virnucflow run: snakemake failed (exit {rc}); {where}, and the jobs' logs are in {outdir / 'logs'}",
              file=sys.stderr)
        return rc
    if not args.dry_run:
        print(where_results_are(outdir, runs, Path(cmd[cmd.index("--snakefile") + 1]).parent))
    return 0


def newest_log(outdir, since):
    """Snakemake's log of the run that started at `since`, if it got as far as writing one."""
    logs = [(p.stat().st_mtime, p) for p in (Path(outdir) / ".snakemake" / "log").glob("*.snakemake.log")]
    logs = sorted(item for item in logs if item[0] >= since)
    return logs[-1][1] if logs else None


def where_results_are(outdir, runs, root) -> str:
    """What the user reads after a run: each sample's results, the summary, and how to build the report."""
    lines = [f"results per sample, in {outdir / 'results'}/<sample>/:"]
    for name in runs:
        folder = outdir / "results" / name
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        lines.append(f"  {name}: {', '.join(files) or '(none yet)'}")
    summary = outdir / "summary"
    if summary.is_dir():
        lines.append(f"summary over the samples: {summary}/ ({', '.join(sorted(p.name for p in summary.iterdir()))})")
    report = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(outdir),
              "--configfile", str(outdir / CONFIG_NAME), "--report", str(outdir / "report.html")]
    lines.append(f"the report: {shlex.join(report)}")
    return "\n".join(lines)


def _yaml(path):
    import yaml  # here, not at the top: every `virnucflow` command imports this module to declare its options

    with open(path) as fh:
        return yaml.safe_load(fh)


def _yaml_text(data):
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _check(value, schema, message):
    """Validate `value` against a JSON schema; the first mistake is one InputError line."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "config"
        raise InputError(message or f"{where}: {error.message}; fix the option that sets it")
