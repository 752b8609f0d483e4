# Config and sample-sheet validation, and the input functions shared by the rules.

import csv
import subprocess
import os
import re
import shlex

from snakemake.utils import validate

validate(config, workflow.source_path("../schemas/config.schema.yaml"))


def _read_samples(path):
    with open(path, newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh, delimiter="\t")
            if any((v or "").strip() for v in r.values())
        ]
    seen = set()
    for row in rows:
        validate(row, workflow.source_path("../schemas/samples.schema.yaml"))
        if row["sample"] in seen:
            raise ValueError(
                f"{path}: sample '{row['sample']}' is listed twice; give each sample one row"
            )
        seen.add(row["sample"])
        if not os.path.isfile(row["fasta"]):
            raise ValueError(
                f"{path}: sample '{row['sample']}': FASTA '{row['fasta']}' does not exist; fix the path"
            )
    if not rows:
        raise ValueError(f"{path}: the sample sheet lists no samples")
    return {r["sample"]: r["fasta"] for r in rows}


SAMPLES = _read_samples(config["samples"])
CHUNK_SIZE = config["chunk_size"]
MODELS = config["models"]
DEMO_DIR = "resources/demo_models"
if str(CHUNK_SIZE) not in {str(k) for k in MODELS["classifiers"]}:
    raise ValueError(
        f"config: chunk_size {CHUNK_SIZE} has no classifier; add models.classifiers.{CHUNK_SIZE} "
        "(the original's 300_model.pth or 500_model.pth)"
    )
CLASSIFIER = MODELS["classifiers"].get(
    CHUNK_SIZE, MODELS["classifiers"].get(str(CHUNK_SIZE))
)


wildcard_constraints:
    sample="|".join(re.escape(s) for s in SAMPLES),
    k=r"\d+",


def keep(path):
    """Per-file intermediates are temp() unless the config asks to keep them."""
    return path if config["keep_intermediate"] else temp(path)


def model_files():
    """Local model files that are made by this workflow (the demo), so that they are built first."""
    if config["demo_models"]:
        return {
            "esm2": MODELS["esm2"],
            "dnabert_s": MODELS["dnabert_s"],
            "classifier": CLASSIFIER,
        }
    return {}


def part_numbers(wildcards):
    parts = checkpoints.split_parts.get(sample=wildcards.sample).output[0]
    return sorted(
        glob_wildcards(os.path.join(parts, "output_{k,[0-9]+}.fa")).k, key=int
    )


def merged_parts(wildcards):
    return expand(
        "results/{sample}/merged/output_{k}_merged.pt",
        sample=wildcards.sample,
        k=part_numbers(wildcards),
    )


def final_outputs():
    return expand(
        "results/{sample}/{name}",
        sample=SAMPLES,
        name=["prediction_results.txt", "prediction_results_highestscore.csv"],
    )


# --- per-record calls, the report and the model fetch ---------------------------------------

CONTIGS = config.setdefault("contigs", {})
CONTIGS.setdefault("min_viral_fraction", 0.5)
REPORT = config.setdefault("report", {})
REPORT.setdefault("top_contigs", 10)
DOWNLOAD_DIR = MODELS.setdefault("download_dir", "models")
REPORT_DIR = "summary"  # cross-sample figures and run statistics, beside results/


def report_outputs():
    """Per-record calls and score tracks of every sample, and the cross-sample figures."""
    return expand(
        "results/{sample}/{name}",
        sample=SAMPLES,
        name=["virus_contigs.tsv", "virus_contigs.fa", "score_tracks.png"],
    ) + [
        f"{REPORT_DIR}/{name}"
        for name in (
            "virus_scores.png",
            "viral_fraction.png",
            "run_stats.png",
            "run_stats.tsv",
        )
    ]


def report_sample_args():
    return " ".join(f"--sample {s} results/{s}" for s in SAMPLES)


def fetch_command(only):
    """`virnucflow fetch-models` for one group of models, into models.download_dir."""
    revision = MODELS.get("dnabert_s_revision") or "main"
    return (
        f"virnucflow fetch-models --dest {DOWNLOAD_DIR} --only {only} "
        f"--dnabert-revision {revision}"
    )


# --- embedding: in-process, or through one resident sidecar per GPU -------------------------

EMBED = config.setdefault("embedding", {})
EMBED.setdefault("sidecar", True)
EMBED.setdefault("device", "auto")
USE_SIDECAR = EMBED["sidecar"]
EXTERNAL_ENDPOINT = EMBED.get("endpoint_file")
SIDECAR_DIR = ".virnucflow/sidecar"


onstart:
    # before Snakemake makes it for the first output in it: the sidecars' endpoint files, locks and
    # secrets live there, so no other user may list it or plant files in it
    if USE_SIDECAR and not EXTERNAL_ENDPOINT:
        os.makedirs(SIDECAR_DIR, mode=0o700, exist_ok=True)


def visible_gpus():
    """GPU ordinals, chosen deterministically: the config's list, else all that CUDA_VISIBLE_DEVICES
    (or nvidia-smi) shows, numbered 0..n-1 as torch will see them. Snakemake assigns no GPU ids.
    """
    if EMBED["device"] == "cpu":
        return []
    if EMBED.get("gpus") is not None:
        return list(EMBED["gpus"])
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return list(
            range(len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"]))
        )
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


GPUS = visible_gpus()
SIDECAR_SLOTS = [f"gpu{g}" for g in GPUS] or ["cpu"]


def sidecar_device(slot):
    return "cpu" if slot == "cpu" else f"cuda:{slot[3:]}"


def on_slurm():
    """True when the jobs go to SLURM through the executor plugin, and inside those jobs. Then each
    sidecar is a SLURM job of its own, reached over TCP (docs/architecture.md, "Under SLURM").
    The executor is known only once the DAG is built: ask this in input and params functions.
    """
    name = getattr(workflow.executor_plugin, "name", None)
    return name in ("slurm", "slurm-jobstep") or (
        workflow.remote_exec and "SLURM_JOB_ID" in os.environ
    )


def sidecar_slots():
    if not on_slurm():
        return SIDECAR_SLOTS
    if EMBED["device"] == "cpu":
        return ["cpu"]
    # one sidecar job per GPU that the run asks for; the submit host's own GPUs do not count
    return [f"gpu{i}" for i in range(len(EMBED.get("gpus") or [0]))]


def slot_of(wildcards):
    """Spread the parts over the sidecars: round robin over (sample, part)."""
    slots = sidecar_slots()
    index = list(SAMPLES).index(wildcards.sample) + int(wildcards.k)
    return slots[index % len(slots)]


def endpoint_file(slot):
    if EXTERNAL_ENDPOINT:
        return EXTERNAL_ENDPOINT
    if on_slurm():  # the sidecar job's endpoint is the sidecar rule's temp() output
        return f"{SIDECAR_DIR}/{slot}.started"
    return f"{SIDECAR_DIR}/{slot}.json"


def serve_args(slot):
    revision = MODELS.get("dnabert_s_revision")
    args = [
        f"--esm2 {MODELS['esm2']}",
        f"--dnabert-s {MODELS['dnabert_s']}",
        f"--dnabert-revision {revision}" if revision else "",
        f"--device {sidecar_device(slot)}",
        f"--mode {EMBED['mode']}" if EMBED.get("mode", "auto") != "auto" else "",
        # $PPID of a job's shell is the Snakemake process: a sidecar started by this run exits when
        # it is gone, however the run ends (kill -9 included). Not a param, so it triggers no rerun.
        "--watch-pid $PPID",
        f"--idle-timeout {EMBED.get('idle_timeout', 3600)}",
        f"--log logs/sidecar/{slot}.server.log",
    ]
    return " ".join(a for a in args if a)


def sidecar_inputs(wildcards):
    if EXTERNAL_ENDPOINT:
        return {}
    return {"sidecar": f"{SIDECAR_DIR}/{slot_of(wildcards)}.started"}


def ensure_args(wildcards):
    """Each client first makes sure its sidecar lives: a rerun, or a retry after a sidecar died,
    starts a fresh one. A sidecar started by hand (endpoint_file) is only used, never started;
    nor is one under SLURM, where a client runs on a CPU node and its sidecar is a GPU job.
    """
    if EXTERNAL_ENDPOINT or on_slurm():
        return ""
    return f"--ensure {serve_args(slot_of(wildcards))}"


def sidecar_rule_inputs(wildcards):
    """Under SLURM the sidecar job waits for every sample's parts: its GPU is not held during the
    preparation, and all per-file jobs are known when it starts, so that the temp() endpoint is
    removed (and the sidecar job ends) only after the last of them."""
    inputs = model_files()
    if on_slurm():
        inputs.update({f"parts_{s}": f"results/{s}/parts" for s in SAMPLES})
    return inputs


def sbatch_args(resources, threads):
    """sbatch options for a sidecar job, from the sidecar rule's resources (set in the SLURM profile)."""
    res = {k: resources[k] for k in resources.keys()}
    args = [f"--cpus-per-task={res.get('cpus_per_task') or max(threads, 1)}"]
    options = {
        "slurm_partition": "--partition",
        "slurm_account": "--account",
        "qos": "--qos",
        "constraint": "--constraint",
        "mem_mb": "--mem",
        "runtime": "--time",
        "gres": "--gres",
    }
    args += [f"{flag}={res[key]}" for key, flag in options.items() if res.get(key)]
    if res.get("gpu"):
        model = res.get("gpu_model")
        args.append(f"--gpus={model}:{res['gpu']}" if model else f"--gpus={res['gpu']}")
    if res.get("slurm_extra"):
        args.append(str(res["slurm_extra"]))
    return " ".join(args)


def sidecar_start_command(wildcards, output, resources, threads):
    slot = wildcards.slot
    if not on_slurm():
        return f"sidecar ensure --endpoint-file {endpoint_file(slot)} {serve_args(slot)} && touch {output}"
    revision = MODELS.get("dnabert_s_revision")
    serve = [
        f"--esm2 {MODELS['esm2']}",
        f"--dnabert-s {MODELS['dnabert_s']}",
        f"--dnabert-revision {revision}" if revision else "",
        f"--idle-timeout {EMBED.get('idle_timeout', 3600)}",
        "--drain-timeout 10",
        f"--log logs/sidecar/{slot}.server.log",
    ]
    # in its job, a sidecar sees its one GPU as cuda:0
    device = {"cpu": "cpu", "auto": "auto"}.get(EMBED["device"], "cuda:0")
    return (
        f"python {workflow.source_path('../scripts/slurm_sidecar.py')} "
        f"--endpoint-file {output} --job-name virnucflow-sidecar-{slot} "
        f"--output logs/sidecar/{slot}.slurm.log --device {device} "
        f"--sbatch-args {shlex.quote(sbatch_args(resources, threads))} -- "
        + " ".join(a for a in serve if a)
    )
