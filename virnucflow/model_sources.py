"""Where each model's files are on disk, resolved without importing torch or touching the network.

A model is named in the config by a *source*: for ESM-2 a fair-esm model name (read from the torch hub
cache, `$TORCH_HOME/hub/checkpoints/<name>.pt`) or a `.pt` path; for DNABERT-S a local directory or a
hub id (read from the offline Hugging Face cache at a revision). The loaders, the fingerprints, the
preflight check and the torch-free sidecar client all resolve a source here, so they agree on which
file a source means.
"""

from __future__ import annotations

import os
from pathlib import Path

from virnucflow.errors import InputError

# The files that make up a DNABERT-S model directory: one weights file (the first present) and these.
DNABERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DNABERT_REQUIRED = ("config.json", "tokenizer.json")


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        home = os.path.join(xdg, "torch")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def esm2_checkpoint(source: str) -> Path:
    """A fair-esm model name (looked up in the torch hub cache) or a .pt path."""
    if source.endswith(".pt") or "/" in source or os.sep in source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"ESM-2 checkpoint not found: {path}; fetch it with `virnucflow fetch-models "
                             "--dest models` (or `snakemake download_models`), or fix the path")
        return path
    path = torch_hub_dir() / "checkpoints" / f"{source}.pt"
    if not path.is_file():
        raise InputError(
            f"ESM-2 model {source} not found at {path}: download "
            f"https://dl.fbaipublicfiles.com/fair-esm/models/{source}.pt there "
            "(or set TORCH_HOME), or give a .pt path"
        )
    return path


def hf_hub_cache() -> Path:
    """The hub cache as huggingface_hub resolves it, but read from the environment now."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def dnabert_directory(source: str, revision: str | None = None) -> Path:
    """A local model directory as given, or a hub id's snapshot from the offline HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise InputError(f"DNABERT-S model directory not found: {source}; fetch it with `virnucflow fetch-models "
                         "--dest models` (or `snakemake download_models`), or fix the path")
    from huggingface_hub import snapshot_download

    cache = hf_hub_cache()
    try:
        return Path(snapshot_download(source, revision=revision, cache_dir=cache, local_files_only=True))
    except (FileNotFoundError, ValueError):  # not cached / incomplete / invalid id
        pinned = f" --revision {revision}" if revision else ""
        raise InputError(
            f"DNABERT-S {source}{' @ ' + revision if revision else ''} is neither a local "
            f"directory nor in the Hugging Face cache {cache}; fetch it once with: "
            f"hf download {source}{pinned} (or `virnucflow fetch-models --dest models`), or fix the path"
        ) from None


def dnabert_files(directory: Path) -> list[Path]:
    """The files that define a DNABERT-S model: config, the weights, the tokenizer."""
    weights = next((directory / n for n in DNABERT_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        raise InputError(f"DNABERT-S model {directory}: no {' or '.join(DNABERT_WEIGHTS)} in it")
    for name in DNABERT_REQUIRED:
        if not (directory / name).is_file():
            raise InputError(f"DNABERT-S model {directory}: {name} missing")
    return [directory / "config.json", weights, directory / "tokenizer.json"]
