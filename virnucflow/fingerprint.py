"""Fingerprints of model files: the sha256 that says which model produced a result.

A file's sha256 is computed once and cached beside the model as `<model>.sha256.json` (in the user's
cache directory when the model's directory is read-only), keyed by size, mtime and inode, so a later
run only stats it. Where a `fetch-models` manifest covers the file and the file has not changed since
the manifest was written, the manifest's sha256 is used without reading the file; a file that changed
after its fetch is hashed again and must still match the manifest, else it is an error that names the
file (`virnucflow fetch-models` repairs it).

A model's fingerprint is one sha256: of the file itself (ESM-2 checkpoint, classifier), or, for a
directory model (DNABERT-S), of the sorted "name sha256" lines of the files that define it. Standard
library only: the torch-free sidecar client computes the fingerprints that it expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from virnucflow.errors import InputError

BLOCK = 1 << 22
MANIFEST_NAME = "manifest.json"
CACHE_SUFFIX = ".sha256.json"


# Git blob ids (sha1 of b"blob <size>\0" + content) of the original's classifier files: a classifier that
# matches one is the original's file, byte for byte (fetch-models checks its downloads against them).
ORIGINAL_CLASSIFIER_BLOBS = {
    "300_model.pth": "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
    "500_model.pth": "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
}


class FingerprintMismatch(InputError):
    """A model file differs from the checksum that its fetch recorded."""


def _user_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(xdg) / "virnucflow" / "sha256"


def _cache_files(model: Path) -> list[Path]:
    beside = model.parent / f"{model.name}{CACHE_SUFFIX}"
    key = hashlib.sha1(str(model.resolve()).encode()).hexdigest()[:16]
    return [beside, _user_cache_dir() / f"{model.name}.{key}{CACHE_SUFFIX}"]


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_cache(model: Path) -> dict:
    for candidate in _cache_files(model):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            return data["files"]
    return {}


def _write_cache(model: Path, files: dict) -> None:
    body = json.dumps({"files": files}, indent=1, sort_keys=True) + "\n"
    for candidate in _cache_files(model):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{candidate.name}.", dir=candidate.parent)
            with os.fdopen(fd, "w") as handle:
                handle.write(body)
            os.replace(tmp, candidate)
            return
        except OSError:
            continue


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path) -> str:
    """The git blob id of a file."""
    with open(path, "rb") as handle:
        digest = hashlib.sha1(b"blob %d\0" % os.fstat(handle.fileno()).st_size)
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def original_classifier_name(path) -> str | None:
    """'300_model.pth' or '500_model.pth' if the file is byte-identical to the original's, else None."""
    sha = git_blob_sha1(path)
    return next((name for name, blob in ORIGINAL_CLASSIFIER_BLOBS.items() if blob == sha), None)


def _manifest_entry(path: Path):
    """(manifest path, recorded entry) of the nearest fetch-models manifest that lists `path`, or None."""
    resolved = path.resolve()
    for directory in list(resolved.parents)[:5]:
        manifest = directory / MANIFEST_NAME
        if not manifest.is_file():
            continue
        try:
            files = json.loads(manifest.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            continue
        entry = files.get(resolved.relative_to(directory).as_posix())
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            return manifest, entry
    return None


def file_sha256(path: Path, cache: dict) -> str:
    """sha256 of one file, from `cache` (updated in place), the manifest, or by reading it."""
    key = _stat_key(path)
    cached = cache.get(path.name)
    if cached and all(cached.get(k) == v for k, v in key.items()):
        return cached["sha256"]
    recorded = _manifest_entry(path)
    if recorded and recorded[1].get("size") == key["size"] and key["mtime_ns"] <= recorded[0].stat().st_mtime_ns:
        sha = recorded[1]["sha256"]
    else:
        sha = sha256_file(path)
        if recorded and sha != recorded[1]["sha256"]:
            raise FingerprintMismatch(
                f"{path}: sha256 {sha[:12]}... differs from {recorded[1]['sha256'][:12]}... recorded by "
                f"{recorded[0]} (the file changed after it was fetched); repair it with: "
                f"virnucflow fetch-models --dest {recorded[0].parent}"
            )
    cache[path.name] = dict(key, sha256=sha)
    return sha


def fingerprint(model: str | Path, files: list[Path] | None = None) -> str:
    """sha256 fingerprint of a model file, or of a model directory's `files`."""
    model = Path(model)
    cache = _read_cache(model)
    before = json.dumps(cache, sort_keys=True)
    if files is None:
        result = file_sha256(model, cache)
    else:
        lines = "".join(f"{f.name} {file_sha256(f, cache)}\n" for f in sorted(files, key=lambda f: f.name))
        result = hashlib.sha256(lines.encode()).hexdigest()
    if json.dumps(cache, sort_keys=True) != before:
        _write_cache(model, cache)
    return result


def esm2_fingerprint(source: str) -> str:
    from virnucflow.model_sources import esm2_checkpoint

    return fingerprint(esm2_checkpoint(source))


def dnabert_fingerprint(source: str, revision: str | None = None) -> str:
    from virnucflow.model_sources import dnabert_directory, dnabert_files

    directory = dnabert_directory(source, revision)
    return fingerprint(directory, dnabert_files(directory))


def model_fingerprints(esm2: str | None, dnabert_s: str | None, revision: str | None = None) -> dict:
    """{'esm2': sha256, 'dnabert_s': sha256} for the models that are given."""
    out = {}
    if esm2:
        out["esm2"] = esm2_fingerprint(esm2)
    if dnabert_s:
        out["dnabert_s"] = dnabert_fingerprint(dnabert_s, revision)
    return out
