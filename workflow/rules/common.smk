# Config and sample-sheet validation, and the input functions shared by the rules.

import functools
import glob
import os
import contextlib
import re
import json
import shlex
import threading

from virnucflow import preflight
from virnucflow.config_check import config_problems, fill_defaults, load_schema
from virnucflow.embedding_settings import SERVE, EmbeddingSettings
from virnucflow.fingerprint import fingerprint, model_fingerprints
from virnucflow.predictions import batch_window, score_jobs
from virnucflow.sample_sheet import read_sample_sheet
from virnucflow.split import EARLY_SHARDS, part_span, parts_completed_by
from virnucflow.shards import shard_bytes, shard_count


def checked_samples():
    """Stop with one line per mistake in the config or the sample sheet (no schema dump, no traceback);
    else set the schema's defaults and return {sample: FASTA}."""
    schema = load_schema(workflow.source_path("../schemas/config.schema.yaml"))
    files = workflow.configfiles
    label = str(files[0]) if len(files) == 1 else "config"
    problems = [f"{label}: {m}" for m in config_problems(config, schema)]
    samples = {}
    if isinstance(config.get("samples"), str):
        row_schema = load_schema(workflow.source_path("../schemas/samples.schema.yaml"))
        samples, sheet = read_sample_sheet(config["samples"], row_schema)
        problems += sheet
    preflight.stop(problems)
    fill_defaults(config, schema)
    return samples


SAMPLES = checked_samples()
CHUNK_SIZE = config["chunk_size"]
SHARD_MB = config["shard_mb"]
MODELS = config["models"]
DEMO_DIR = "resources/demo_models"
CLASSIFIER = MODELS["classifiers"].get(
    CHUNK_SIZE, MODELS["classifiers"].get(str(CHUNK_SIZE))
)


wildcard_constraints:
    sample="|".join(re.escape(s) for s in SAMPLES),
    slot=r"[^/]+",
    k=r"\d+",
    shard=r"\d+",


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
    counted = checkpoints.count_parts.get(sample=wildcards.sample).output[0]
    with open(counted) as handle:
        return [str(k) for k in range(1, json.load(handle)["parts"] + 1)]


def shards_of(wildcards):
    """How many shards a sample makes: from its file's size (virnucflow/shards.py)."""
    return shard_count(
        os.path.getsize(SAMPLES[wildcards.sample]), shard_bytes(SHARD_MB)
    )


def prepared_shards(wildcards):
    """The shards' chunked and kept-frame files, ids and counts of a sample, in shard order."""
    n = shards_of(wildcards)
    pattern = "results/{sample}/prepared/shard_{i}.{name}"
    return {
        key: [
            pattern.format(sample=wildcards.sample, i=i, name=name)
            for i in range(1, n + 1)
        ]
        for key, name in (
            ("chunked", "chunked.fa"),
            ("nucleotide", "nucleotide.fa"),
            ("protein", "protein.faa"),
            ("ids", "ids"),
            ("counts", "json"),
        )
    }


def shard_frame_files(wildcards):
    return expand(
        "results/{sample}/shard_frames/{i}.json",
        sample=wildcards.sample,
        i=range(1, shards_of(wildcards) + 1),
    )


def shard_frames(sample, shard):
    """The kept frames of one prepared shard; until it is known, Snakemake waits for its checkpoint."""
    done = checkpoints.shard_frames.get(sample=sample, shard=shard).output[0]
    with open(done) as handle:
        return json.load(handle)["kept_frames"]


def part_sources(wildcards):
    """The shards' kept-frame files that hold part k, from the first that holds it to the one where it ends,
    and the counts of the shards before them, whose frames split-part skips. Always the shards' files (kept
    for re-embedding): a job's set of input files must not depend on when it ran, or Snakemake redoes it.
    """
    sample, k, n = wildcards.sample, int(wildcards.k), config["records_per_file"]
    counts = []
    for shard in range(1, shards_of(wildcards) + 1):
        counts.append(shard_frames(sample, shard))
        if sum(counts) >= k * n:
            break
    first, last, _ = part_span(counts, k, n)
    pattern = "results/{sample}/prepared/shard_{i}.{name}"
    return {
        "nucleotide": [
            pattern.format(sample=sample, i=i, name="nucleotide.fa")
            for i in range(first, last + 1)
        ],
        "protein": [
            pattern.format(sample=sample, i=i, name="protein.faa")
            for i in range(first, last + 1)
        ],
        "before": [f"results/{sample}/shard_frames/{i}.json" for i in range(1, first)],
    }


# Priorities: the sidecar 10; shard_frames and split_part 1 (they hand a part on); other jobs 0; then the
# embed jobs, part 1 first; then the shards, shard 1 first. So a part that is ready is sent before the
# remaining shards are prepared and parts are sent in order (the sidecar takes the oldest part first, and
# classify_part needs its neighbours). Snakemake's scheduler weighs a priority above all else, so values
# in (-1, -0.5] and (-2, -1.5] keep the two orders apart however many parts and shards there are.
def embed_priority(wildcards):
    k = int(wildcards.k)
    return -k / (k + 1)


def shard_priority(wildcards):
    shard = int(wildcards.shard)
    return -1 - shard / (shard + 1)


# run_info asks for the parts that end in each of the first EARLY_SHARDS shards (virnucflow/split.py) as
# soon as those shards are prepared, so that they are embedded while later shards are; the rest follow
# count_parts.
def early_parts(shard):
    """An input function of run_info: the merged parts that end in shard `shard` of the sample, once it and
    the shards before it are prepared, while the sample's parts are still to be counted (as for the early
    sidecar flags, the condition is a file: sidecar_early_inputs says why)."""

    def parts(wildcards):
        if shard > shards_of(wildcards) or os.path.exists(
            f"results/{wildcards.sample}/parts.json"
        ):
            return []
        counts = [shard_frames(wildcards.sample, i) for i in range(1, shard + 1)]
        return expand(
            "results/{sample}/merged/output_{k}_merged.pt",
            sample=wildcards.sample,
            k=parts_completed_by(counts, config["records_per_file"]),
        )

    return parts


def classify_window_parts(wildcards):
    """The parts whose rows share a batch of the classifier with the rows that the scoring job
    starting at part k scores (first, last)."""
    return batch_window(
        int(wildcards.k), config["records_per_file"], len(part_numbers(wildcards))
    )


def classify_window(wildcards):
    first, last = classify_window_parts(wildcards)
    return expand(
        "results/{sample}/merged/output_{k}_merged.pt",
        sample=wildcards.sample,
        k=range(first, last + 1),
    )


def part_scores(wildcards):
    """The scored rows of a sample: one file per part (per scoring job when parts are tiny)."""
    return expand(
        "results/{sample}/scores/output_{k}.tsv",
        sample=wildcards.sample,
        k=score_jobs(len(part_numbers(wildcards)), config["records_per_file"]),
    )


def provenance_parts(wildcards):
    return expand(
        "results/{sample}/provenance/output_{k}.json",
        sample=wildcards.sample,
        k=part_numbers(wildcards),
    )


def final_outputs():
    return expand(
        "results/{sample}/{name}",
        sample=SAMPLES,
        name=[
            "prediction_results.txt",
            "prediction_results_highestscore.csv",
            "run_info.json",
        ],
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
        name=[
            "virus_contigs.tsv",
            "virus_contigs.html",
            "virus_contigs.fa",
            "score_tracks.png",
        ],
    ) + [
        f"{REPORT_DIR}/{name}"
        for name in (
            "virus_scores.png",
            "viral_fraction.png",
            "run_stats.png",
            "run_stats.tsv",
            "run_stats.html",
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
# Every embedding setting (models, mode, device, budgets, timeouts) is one EmbeddingSettings object,
# built once from the config and turned into command line options here; docs/architecture.md says
# how a setting travels from the config to a sidecar.

EMBED = config.setdefault("embedding", {})
EMBED.setdefault("sidecar", True)
USE_SIDECAR = EMBED["sidecar"]
EXTERNAL_ENDPOINT = EMBED.get("endpoint_file")
SIDECAR_DIR = ".virnucflow/sidecar"
SETTINGS = EmbeddingSettings.from_config(config)
# The settings travel to every embedding process as this one file, an ancient() input: changing a
# setting that does not change the vectors (a timeout, a budget) rewrites it but re-embeds nothing.
SETTINGS_FILE = ".virnucflow/embedding_settings.json"


@functools.cache
def preflight_run():
    """Stop before any work, one line each, when a configured model is missing or is not the model its key
    claims, a GPU asked for does not exist, or the disk is too full (virnucflow/preflight.py). The input
    function of the first step (shard) calls it, so a run that only fetches the models is not checked; the
    demo's models are made by the workflow, and cluster jobs were checked by the run that submitted them;
    under SLURM the GPUs are the sidecar jobs' own."""
    if workflow.remote_exec:
        return
    problems, _ = preflight.run_problems(
        config,
        SAMPLES,
        CLASSIFIER,
        models=not config["demo_models"],
        gpus=not on_slurm(),
        visible=len(GPUS) if EMBED.get("gpus") is None else None,
    )
    preflight.stop(problems)


def sample_fasta(wildcards):
    preflight_run()
    return SAMPLES[wildcards.sample]


onstart:
    # before Snakemake makes it for the first output in it: the sidecars' endpoint files, locks and
    # secrets live there, so no other user may list it or plant files in it
    if USE_SIDECAR and not EXTERNAL_ENDPOINT:
        os.makedirs(SIDECAR_DIR, mode=0o700, exist_ok=True)


def forget_sidecar_flags():
    """Locally a flag says only that a sidecar was started; no embed job takes it (sidecar_inputs), so
    Snakemake may leave it behind. Without it the next run that has a sample to embed starts its
    sidecars with the run again. Under SLURM the flags are the samples' leases on the sidecar jobs:
    after a failed run they go too, which ends the sidecar jobs (sidecar.leases) instead of leaving
    them to their idle timeout, and the next run takes new ones.
    """
    # never from inside a job (remote_exec: a job's own Snakemake process under SLURM)
    if USE_SIDECAR and not EXTERNAL_ENDPOINT and not workflow.remote_exec:
        for flag in glob.glob(f"{SIDECAR_DIR}/*/*.started"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(flag)


def stop_rate_timers():
    """End the run when its last job ends. Every round of Snakemake's scheduler starts a non-daemon
    threading.Timer of its job rate limit's timespan (1 s by default) that wakes the next round; the
    last one kept the finished run's process alive for up to a second (1.5 s from a trivial two-job
    run's last output to its exit, 0.45 s with this). Its rounds are over when these handlers run.
    """
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()


onsuccess:
    forget_sidecar_flags()
    stop_rate_timers()


onerror:
    forget_sidecar_flags()
    stop_rate_timers()


def visible_gpus():
    """GPU ordinals, chosen deterministically: the config's list, else all that CUDA_VISIBLE_DEVICES
    (or nvidia-smi) shows, numbered 0..n-1 as torch will see them. Snakemake assigns no GPU ids.
    """
    if SETTINGS.device == "cpu":
        return []
    if EMBED.get("gpus") is not None:
        return list(EMBED["gpus"])
    return list(range(preflight.visible_gpu_count()))


GPUS = visible_gpus()
N_CPU = SETTINGS.cpu_sidecars
CPU_SLOTS = ["cpu"] if N_CPU == 1 else [f"cpu{i}" for i in range(N_CPU)]
SIDECAR_SLOTS = [f"gpu{g}" for g in GPUS] or CPU_SLOTS


def sidecar_device(slot):
    return "cpu" if slot.startswith("cpu") else f"cuda:{slot[3:]}"


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
    if SETTINGS.device == "cpu":
        return CPU_SLOTS
    # one sidecar job per GPU that the run asks for; the submit host's own GPUs do not count
    return [f"gpu{i}" for i in range(len(EMBED.get("gpus") or [0]))]


def slots_of(wildcards):
    """Every sidecar of the run, starting with the part's "home" (round robin over (sample, part)): the part
    goes to whichever will finish it first when it runs (sidecar/assign.py), the home on a tie, and a
    client with --ensure restarts its home if it is gone."""
    slots = sidecar_slots()
    index = (list(SAMPLES).index(wildcards.sample) + int(wildcards.k)) % len(slots)
    return slots[index:] + slots[:index]


def endpoint_file(slot):
    if EXTERNAL_ENDPOINT:
        return EXTERNAL_ENDPOINT
    return f"{SIDECAR_DIR}/{slot}.json"


def slot_options(slot):
    """What differs between the sidecars of one run: the device (the rest is serve_settings())."""
    # under SLURM the sidecar job's script picks the device: its one GPU (cuda:0), else the CPU
    if on_slurm():
        return ["--drain-timeout 10"]
    return [f"--device {sidecar_device(slot)}"]


def started_sidecar_options(slot):
    """The options, beside the settings file, of a sidecar that this run starts on the host."""
    # $PPID of a job's shell is the Snakemake process: a sidecar started by this run exits when
    # it is gone, however the run ends (kill -9 included).
    return " ".join(
        slot_options(slot)
        + ["--watch-pid $PPID", f"--log logs/sidecar/{slot}.server.log"]
    )


def serve_settings():
    """The run's settings as `sidecar serve` options (EmbeddingSettings.to_args), for the `sidecar` job.
    Options, not SETTINGS_FILE: a job that waits for the file's job started late (on the H200 machine up
    to 1.5 s after the file was written, when the first shard ended), and its models load on the
    critical path of the run's start."""
    return shlex.join(SETTINGS.to_args(SERVE))


def serve_args(slot):
    """`sidecar serve` options of a sidecar that this run starts: the settings and the slot's device."""
    return f"{serve_settings()} {started_sidecar_options(slot)}"


def embedding_identity():
    """What makes an embedding: the models' fingerprints, the numeric mode and, where it may be fast,
    DNABERT-S's fast precision. The param of the
    `embedding_identity` rule, whose file every embed and merge job reads; a change re-embeds.
    (Snakemake does not compare the params of jobs that it finds behind a checkpoint whose temp()
    outputs are gone, so the identity cannot be a param of those jobs themselves.) The demo's models
    are made by the workflow itself, so their file times already say when they change.
    """
    device = SETTINGS.device
    if USE_SIDECAR and not (EXTERNAL_ENDPOINT or on_slurm()):
        device = sidecar_device(SIDECAR_SLOTS[0])
    mode = SETTINGS.resolved_mode(device) if device != "auto" else SETTINGS.mode
    if config["demo_models"]:
        models = {"esm2": SETTINGS.esm2, "dnabert_s": SETTINGS.dnabert_s}
    else:
        models = model_fingerprints(
            SETTINGS.esm2, SETTINGS.dnabert_s, SETTINGS.dnabert_revision
        )
    identity = {"models": models, "mode": mode}
    # fast, or auto resolved on the sidecar's node: DNABERT-S's precision counts
    if mode != "exact":
        identity["fast_dnabert_precision"] = SETTINGS.fast_dnabert_precision
    return json.dumps(identity, sort_keys=True)


def classifier_identity():
    return CLASSIFIER if config["demo_models"] else fingerprint(CLASSIFIER)


def sidecar_flags(sample):
    """The `sidecar` rule's outputs for one sample, one per sidecar, as inputs that never make their
    consumer rerun: a flag is made anew whenever a sidecar starts, and its time says nothing about the
    results. One per sample, so that starting the sidecars for a new sample touches no other sample's
    jobs (under SLURM a flag is a lease, which its sample's embed jobs take)."""
    return {
        f"sidecar_{slot}": ancient(f"{SIDECAR_DIR}/{slot}/{sample}.started")
        for slot in sidecar_slots()
    }


def sidecar_inputs(wildcards):
    """Under SLURM an embed job needs every sidecar job of the run started: it picks one when it runs, and
    cannot start one itself. Locally it names none: its client starts its home sidecar when none answers
    (--ensure, embed_args), and the sidecars start with the run through run_info (sidecar_early_inputs).
    Locally no flag is needed, and under SLURM the flags are the sample's own leases: a flag shared by the
    samples would make Snakemake redo every finished part whenever a sidecar job runs (ancient() holds back
    only files that exist, and the flags are temp()), so that a sample added to a finished run would
    re-embed all the others."""
    if EXTERNAL_ENDPOINT or not USE_SIDECAR or not on_slurm():
        return {}
    return sidecar_flags(wildcards.sample)


def sidecar_early_inputs(wildcards):
    """Start the sidecars with the run, so that the models load while the sample is prepared.

    The input function of run_info, a per-sample job that Snakemake plans from the start (the embed
    jobs appear only after the count_parts checkpoint). It needs the sidecars only while the sample's
    parts.json does not exist, that is while its embed jobs are still to come; otherwise the embed
    jobs that need a sidecar name it themselves. So a run that embeds nothing (up to date, --until a
    preparation step, --forcerun classify, a rerun after a failed classify) starts none. The file,
    not checkpoints.count_parts.get(): Snakemake's first pass takes every checkpoint as incomplete,
    and a job it marks then stays marked (docs/architecture.md, "The sidecars start with the run").
    Under SLURM the flag is the sample's lease on the sidecar job, removed once no job still needs it.
    """
    if EXTERNAL_ENDPOINT or not USE_SIDECAR:
        return {}
    if os.path.exists(f"results/{wildcards.sample}/parts.json"):
        return {}
    return sidecar_flags(wildcards.sample)


def embed_args(wildcards):
    """How `virnucflow embed` reaches its models for one part; the settings come from SETTINGS_FILE,
    which also tells the client what its sidecar must serve (it refuses other models or another mode).
    These options are params: they change only when the run's sidecars do. Each client first makes
    sure its sidecar lives, so a rerun, or a retry after a sidecar died, starts a fresh one. A sidecar
    started by hand (endpoint_file) is only used, never started; nor is one under SLURM, where a
    client runs on a CPU node and its sidecar is a GPU job.
    """
    if not USE_SIDECAR:
        return "--transport in-process"
    if EXTERNAL_ENDPOINT:
        return f"--transport sidecar --endpoint-file {EXTERNAL_ENDPOINT}"
    slots = slots_of(wildcards)
    args = "--transport sidecar " + " ".join(
        f"--endpoint-file {endpoint_file(slot)}" for slot in slots
    )
    if on_slurm():
        return args
    return f"{args} --ensure {started_sidecar_options(slots[0])}"


def sidecar_rule_inputs(wildcards):
    """Only what a sidecar loads: it starts with the run (sidecar_early_inputs), locally and under SLURM.
    Its settings are options (serve_settings), so no other job comes before it but the demo's models.
    """
    return model_files()


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
    return (
        f"python {workflow.source_path('../scripts/slurm_sidecar.py')} "
        f"--endpoint-file {endpoint_file(slot)} --lease {output} --job-name virnucflow-sidecar-{slot} "
        f"--output logs/sidecar/{slot}.slurm.log --device {sidecar_device(slot) if slot.startswith('cpu') else 'auto'} "
        f"--sbatch-args {shlex.quote(sbatch_args(resources, threads))} -- "
        + " ".join([serve_settings()] + slot_options(slot))
        + f" --log logs/sidecar/{slot}.server.log"
    )
