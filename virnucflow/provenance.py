"""What produced a result: each embedded part's record, and a sample's `run_info.json`.

The embedding step of every part writes a small JSON record beside its vectors: the fingerprints of the
models that embedded it, the numeric mode, the device and GPU, the versions of the embedding process,
and whether a sidecar or the job itself ran the models. `run_info.json` gathers a sample's part records
with what the step after classification adds (the classifier's fingerprint, the chunk size, the
versions of its own environment, Snakemake's included, and when the run ended). Standard library only.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from virnucflow.atomic import atomic_path

MODEL_KEYS = ("source", "revision", "name", "dim")  # what identifies a model, not what it has done
PACKAGES = ("virnucflow", "torch", "fair-esm", "numpy", "pyzmq", "snakemake")


def package_versions(names=PACKAGES) -> dict:
    """Installed versions, read from package metadata (nothing is imported)."""
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict:
    """The commit of the virnucflow checkout that runs, and whether it has local changes (None outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def write_json(path, record) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def part_record(transport: str, served: dict) -> dict:
    """A part's record from what the embedding process reports about itself (`served`: mode, device,
    gpu_name, fingerprints, models, versions; a sidecar's status, or the in-process equivalent)."""
    keys = ("mode", "device", "gpu_name", "fingerprints", "versions")
    record = {key: served.get(key) for key in keys}
    if served.get("fast_dnabert_precision") is not None:  # fast mode only
        record["fast_dnabert_precision"] = served["fast_dnabert_precision"]
    record["models"] = {name: {k: model.get(k) for k in MODEL_KEYS if k in model}
                        for name, model in (served.get("models") or {}).items()}
    record["transport"] = transport
    if transport == "sidecar":
        record["sidecar"] = {key: served.get(key) for key in ("pid", "host", "endpoint")}
    return record


def _one_or_all(values):
    distinct = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    return distinct[0] if len(distinct) == 1 else distinct


def run_info(sample: str, part_files, classifier: dict, chunk_size: int) -> dict:
    """The content of a sample's run_info.json. Values that differ between parts are listed."""
    parts = [json.loads(Path(p).read_text()) for p in part_files]
    embedding = {key: _one_or_all([p.get(key) for p in parts]) if parts else None
                 for key in ("mode", "transport", "fingerprints", "models", "versions")}
    if any("fast_dnabert_precision" in p for p in parts):
        embedding["fast_dnabert_precision"] = _one_or_all([p.get("fast_dnabert_precision") for p in parts])
    devices = _one_or_all([{"device": p.get("device"), "gpu_name": p.get("gpu_name")} for p in parts]) if parts else []
    return {
        "sample": sample,
        "virnucflow": dict(version=package_versions(("virnucflow",))["virnucflow"], **git_commit()),
        "chunk_size": chunk_size,
        "embedding": dict(embedding, devices=devices, parts=len(parts)),
        "classifier": classifier,
        "versions": package_versions(),
        "ended_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
