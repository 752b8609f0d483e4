# Config and sample-sheet validation, and the input functions shared by the rules.

import csv
import os
import re

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
