"""Preflight: each configured model file exists and is the kind of model its config key claims, before any work.

Torch's file format is a zip archive whose `data.pkl` records the object tree; here its pickle is only
*disassembled* (virnucflow.pickle_globals), never run, and the strings it holds say what the file is: an ESM-2
checkpoint names `encoder.sentence_encoder.` weights and a `cfg`, a classifier names `hidden_layer` and
`output_layer`. A DNABERT-S directory needs its config, weights and tokenizer, and a config of a BERT-like
model. Standard library only, so the check runs at workflow start in milliseconds (torch is not imported).
Every failure is one line that names the file and the config key.
"""

from __future__ import annotations

import json
from pathlib import Path

from virnucflow.errors import InputError
from virnucflow.model_sources import dnabert_directory, dnabert_files, esm2_checkpoint
from virnucflow.pickle_globals import pickle_strings, torch_zip_pickle

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch's pre-zip format


def _pickle_strings(path: Path) -> set[str] | None:
    """The strings in a torch file's pickle, or None for the legacy (pre-zip) format; InputError otherwise."""
    data = torch_zip_pickle(path)
    if data is not None:
        return pickle_strings(data)
    with open(path, "rb") as handle:
        if handle.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC:
            return None
    raise InputError(f"{path}: not a torch file")


def _claim(key: str, path: Path, what: str, strings: set[str] | None, needles: tuple[str, ...]):
    if strings is None:
        return
    if not all(any(s.startswith(n) for s in strings) for n in needles):
        raise InputError(f"config {key}: {path} is not {what}; point {key} at the right file")


def check_esm2(source: str, key: str = "models.esm2") -> Path:
    try:
        path = esm2_checkpoint(source)
        strings = _pickle_strings(path)
    except InputError as exc:
        raise InputError(f"config {key}: {exc}") from None
    _claim(key, path, "a fair-esm ESM-2 checkpoint (no encoder.sentence_encoder weights and cfg)", strings,
           ("encoder.sentence_encoder.layers.", "cfg"))
    return path


def check_dnabert_s(source: str, revision: str | None = None, key: str = "models.dnabert_s") -> Path:
    try:
        directory = dnabert_directory(source, revision)
        config_file = dnabert_files(directory)[0]
        config = json.loads(config_file.read_text())
    except InputError as exc:
        raise InputError(f"config {key}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"config {key}: {directory}/config.json is not readable JSON ({exc})") from None
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if not isinstance(config, dict) or any(k not in config for k in needed):
        raise InputError(f"config {key}: {config_file} is not a BERT-style model config "
                         f"(needs {', '.join(needed)}); point {key} at the DNABERT-S directory")
    return directory


def check_classifier(path: str, key: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {key}: classifier file {path} does not exist; fetch it with "
                         "`virnucflow fetch-models` or fix the path")
    try:
        strings = _pickle_strings(path)
    except InputError as exc:
        raise InputError(f"config {key}: {exc}") from None
    _claim(key, path, "a VirNucPro MLP classifier (no hidden_layer/output_layer weights)", strings,
           ("hidden_layer", "output_layer"))
    return path
