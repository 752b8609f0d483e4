"""No file that virnucflow reads runs code: pickled payloads in real-format model and feature files are
refused with one line naming the global and the file, and only a file whose sha256 the user pinned
(--unsafe-trust-pickle / models.unsafe_trust_pickle_sha256) is unpickled in full."""

import argparse
import collections
import hashlib
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli
from virnucflow import safe_load
from virnucflow.classifier import MLPClassifier, _recorded_as_main, load_classifier, write_random_classifier
from virnucflow.demo_models import DNABERT_DIR, ESM2_FILE
from virnucflow.embedding_files import load_embeddings
from virnucflow.errors import InputError
from virnucflow.features import load_merged
from virnucflow.models.dnabert_s import load_dnabert_s
from virnucflow.models.esm2 import load_esm2

PROTEINS = ["MKVLAAGIVG", "W"]
DNA = ["ACGTACGTTAGCCA", "GGGCCCAAATTT"]


class SystemPayload:
    """Unpickling this runs `touch MARKER` through os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload(SystemPayload):
    """Unpickling this creates MARKER through builtins.eval."""

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _esm2_data(demo_models):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(demo_models / ESM2_FILE, weights_only=True)


def write_esm2(demo_models, path, extra, **save_options):
    """The demo ESM-2 checkpoint (real fair-esm format) with one more object in its cfg."""
    data = _esm2_data(demo_models)
    data["cfg"]["extra"] = extra
    torch.save(data, path, **save_options)
    return path


def write_dnabert_bin(demo_models, directory, make_state):
    """The demo DNABERT-S directory with its weights as pytorch_model.bin = make_state(state dict)."""
    shutil.copytree(demo_models / DNABERT_DIR, directory)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(make_state(state), directory / "pytorch_model.bin")
    return directory


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refusal(message, path, name, opt_in=True):
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message and f"refused to unpickle {name}" in message, message
    if opt_in:
        assert safe_load.TRUST_FLAG in message and safe_load.TRUST_KEY in message and "runs any code" in message


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a payload ran"


# ---- refusals, in process --------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("payload, name, protocol", [
    (SystemPayload, "posix.system", 2),
    (EvalPayload, "builtins.eval", 2),
    (SystemPayload, "posix.system", 4),  # torch's unpickler stops at FRAME; the name comes from a static read
])
def test_esm2_checkpoint_with_payload_is_refused(demo_models, tmp_path, marker, payload, name, protocol):
    path = write_esm2(demo_models, tmp_path / "esm2_t2_evil.pt", payload(marker), pickle_protocol=protocol)
    with pytest.raises(InputError) as caught:
        load_esm2(str(path))
    assert_refusal(str(caught.value), path, name)


@pytest.mark.unit
def test_dnabert_s_bin_with_payload_is_refused(demo_models, tmp_path, marker):
    directory = write_dnabert_bin(demo_models, tmp_path / "dnabert", lambda s: {**s, "extra": SystemPayload(marker)})
    with pytest.raises(InputError) as caught:
        load_dnabert_s(str(directory))
    assert_refusal(str(caught.value), directory / "pytorch_model.bin", "posix.system")


@pytest.mark.unit
def test_classifier_with_payload_is_refused_naming_global_and_file(tmp_path, marker):
    model = MLPClassifier(96, 8, 2)
    model.extra = EvalPayload(marker)
    path = tmp_path / "evil_model.pth"
    with _recorded_as_main(MLPClassifier):
        torch.save(model, path)
    with pytest.raises(InputError) as caught:
        load_classifier(path)
    assert_refusal(str(caught.value), path, "builtins.eval", opt_in=False)
    assert "state_dict()" in str(caught.value)


@pytest.mark.unit
def test_feature_files_with_payload_are_refused(tmp_path, marker):
    merged = tmp_path / "output_1_merged.pt"
    torch.save({"ids": ["a"], "data": torch.zeros(1, 4), "note": SystemPayload(marker)}, merged)
    with pytest.raises(InputError) as caught:
        load_merged(merged)
    assert_refusal(str(caught.value), merged, "posix.system", opt_in=False)
    assert "rerun the merge step" in str(caught.value)

    npz = tmp_path / "output_1_ESM.npz"
    with open(npz, "wb") as handle:
        np.savez(handle, ids=np.array([SystemPayload(marker)], dtype=object), data=np.zeros((1, 4), np.float32))
    with pytest.raises(InputError) as caught:
        load_embeddings(npz)
    message = str(caught.value)
    assert "\n" not in message and str(npz) in message and "posix.system" in message and "regenerate" in message


# ---- the opt-in: a pinned sha256 --------------------------------------------------------------

@pytest.mark.unit
def test_pinned_sha256_loads_a_trusted_non_standard_esm2_checkpoint(demo_models, tmp_path):
    path = write_esm2(demo_models, tmp_path / "esm2_t2_trusted.pt", types.SimpleNamespace(task="masked_lm"))
    with pytest.raises(InputError) as caught:
        load_esm2(str(path))
    assert_refusal(str(caught.value), path, "types.SimpleNamespace")

    other = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(InputError) as caught:
        load_esm2(str(path), trusted=(other,))
    assert_refusal(str(caught.value), path, "types.SimpleNamespace")
    assert f"its sha256 {sha256(path)} is not a pinned one" in str(caught.value)

    trusted = load_esm2(str(path), trusted=(other, sha256(path)))
    reference = load_esm2(str(demo_models / ESM2_FILE))
    assert np.array_equal(trusted.embed(PROTEINS), reference.embed(PROTEINS))


@pytest.mark.unit
def test_a_pin_of_one_file_does_not_let_another_run(demo_models, tmp_path, marker):
    trusted = write_esm2(demo_models, tmp_path / "esm2_t2_trusted.pt", types.SimpleNamespace(task="masked_lm"))
    evil = write_esm2(demo_models, tmp_path / "esm2_t2_evil.pt", SystemPayload(marker))
    with pytest.raises(InputError) as caught:
        load_esm2(str(evil), trusted=(sha256(trusted),))
    assert_refusal(str(caught.value), evil, "posix.system")


@pytest.mark.unit
def test_pinned_sha256_loads_a_trusted_non_standard_dnabert_s_bin(demo_models, tmp_path):
    directory = write_dnabert_bin(demo_models, tmp_path / "dnabert", lambda s: collections.defaultdict(list, s))
    bin_file = directory / "pytorch_model.bin"
    with pytest.raises(InputError) as caught:
        load_dnabert_s(str(directory))
    assert_refusal(str(caught.value), bin_file, "collections.defaultdict")
    trusted = load_dnabert_s(str(directory), trusted=(sha256(bin_file),))
    reference = load_dnabert_s(str(demo_models / DNABERT_DIR))
    assert np.array_equal(trusted.embed(DNA), reference.embed(DNA))


@pytest.mark.unit
def test_trust_flag_is_repeatable_checked_and_forwarded_to_the_started_server():
    from sidecar.cli import _serve_args, build_parser

    pins = [hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest().upper()]
    ns = build_parser().parse_args(["embed", "--endpoint-file", "e.json", "--ensure", "--esm2", "x.pt",
                                    safe_load.TRUST_FLAG, pins[0], safe_load.TRUST_FLAG, pins[1]])
    args = _serve_args(ns)
    assert [args[i + 1] for i, a in enumerate(args) if a == safe_load.TRUST_FLAG] == [pins[0], pins[1].lower()]
    assert safe_load.TRUST_FLAG not in _serve_args(build_parser().parse_args(
        ["ensure", "--endpoint-file", "e.json", "--esm2", "x.pt"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--endpoint-file", "e.json", safe_load.TRUST_FLAG, "abc"])


# ---- through the command lines -----------------------------------------------------------------

def _parts(tmp_path):
    nucleotide, protein = tmp_path / "output_1.fa", tmp_path / "output_1.faa"
    nucleotide.write_text("".join(f">f{i}\n{s}\n" for i, s in enumerate(DNA)))
    protein.write_text("".join(f">f{i}\n{s}\n" for i, s in enumerate(PROTEINS)))
    return nucleotide, protein


@pytest.mark.process
@pytest.mark.parametrize("model", ["esm2", "dnabert_s"])
def test_virnucflow_embed_refuses_a_payload_in_one_line(demo_models, tmp_path, marker, model):
    esm2, dnabert, refused = demo_models / ESM2_FILE, demo_models / DNABERT_DIR, None
    if model == "esm2":
        esm2 = refused = write_esm2(demo_models, tmp_path / "esm2_t2_evil.pt", SystemPayload(marker))
    else:
        dnabert = write_dnabert_bin(demo_models, tmp_path / "dnabert",
                                    lambda s: {**s, "extra": SystemPayload(marker)})
        refused = dnabert / "pytorch_model.bin"
    nucleotide, protein = _parts(tmp_path)
    outputs = tmp_path / "a.npz", tmp_path / "b.npz"
    proc = run_cli("embed", "--nucleotide", str(nucleotide), "--protein", str(protein),
                   "--dnabert-out", str(outputs[0]), "--esm-out", str(outputs[1]),
                   "--esm2", str(esm2), "--dnabert-s", str(dnabert), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virnucflow embed: error: "), proc.stderr
    assert_refusal(lines[0], refused, "posix.system")
    assert not any(path.exists() for path in outputs)


@pytest.mark.process
def test_virnucflow_classify_refuses_a_payload_in_one_line(demo_models, tmp_path, marker):
    path = tmp_path / "300_model.pth"
    model = write_random_classifier(path, input_dim=96)
    model.extra = SystemPayload(marker)
    with _recorded_as_main(MLPClassifier):
        torch.save(model, path)
    merged = tmp_path / "output_1_merged.pt"
    torch.save({"ids": ["a_1F1"], "data": torch.zeros(1, 96)}, merged)
    proc = run_cli("classify", "--model", str(path), "--out-dir", str(tmp_path / "out"), str(merged), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virnucflow classify: error: "), proc.stderr
    assert_refusal(lines[0], path, "posix.system", opt_in=False)
    assert not (tmp_path / "out").exists()


def _sidecar_embed(tmp_path, name, esm2, demo_models, *extra):
    nucleotide, protein = _parts(tmp_path)
    outputs = tmp_path / f"{name}_a.npz", tmp_path / f"{name}_b.npz"
    command = [sys.executable, "-m", "sidecar", "embed", "--endpoint-file", str(tmp_path / f"{name}.json"),
               "--ensure", "--watch-pid", str(os.getpid()), "--threads", "1", "--log", str(tmp_path / f"{name}.log"),
               "--esm2", str(esm2), "--dnabert-s", str(demo_models / DNABERT_DIR), *extra,
               "--nucleotide", str(nucleotide), "--protein", str(protein),
               "--dnabert-out", str(outputs[0]), "--esm-out", str(outputs[1]), "--ready-timeout", "120"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300), outputs


@pytest.mark.process
def test_sidecar_refuses_a_payload_and_loads_a_pinned_checkpoint(demo_models, tmp_path, marker):
    evil = write_esm2(demo_models, tmp_path / "esm2_t2_evil.pt", SystemPayload(marker))
    proc, outputs = _sidecar_embed(tmp_path, "evil", evil, demo_models)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not load its models: InputError: " in lines[0], proc.stderr
    assert_refusal(lines[0], evil, "posix.system")
    assert not any(path.exists() for path in outputs)

    trusted = write_esm2(demo_models, tmp_path / "esm2_t2_trusted.pt", types.SimpleNamespace(task="masked_lm"))
    proc, outputs = _sidecar_embed(tmp_path, "trusted", trusted, demo_models, safe_load.TRUST_FLAG, sha256(trusted))
    try:
        assert proc.returncode == 0, proc.stderr
        ids, vectors = load_embeddings(outputs[1])
        assert ids == ["f0", "f1"]
        assert np.array_equal(vectors, load_esm2(str(demo_models / ESM2_FILE)).embed(PROTEINS))
        assert "is pinned with --unsafe-trust-pickle" in (tmp_path / "trusted.log").read_text()
    finally:
        subprocess.run([sys.executable, "-m", "sidecar", "stop", "--endpoint-file", str(tmp_path / "trusted.json")],
                       cwd=REPO, capture_output=True, timeout=60)


@pytest.mark.unit
def test_damaged_model_files_are_one_line_errors(demo_models, tmp_path):
    checkpoint = tmp_path / "esm2_t2_cut.pt"
    checkpoint.write_bytes((demo_models / ESM2_FILE).read_bytes()[:5000])
    directory = write_dnabert_bin(demo_models, tmp_path / "dnabert", lambda s: s)
    bin_file = directory / "pytorch_model.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:5000])
    for load, path in ((lambda: load_esm2(str(checkpoint)), checkpoint),
                       (lambda: load_dnabert_s(str(directory)), bin_file)):
        with pytest.raises(InputError) as caught:
            load()
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and "not a readable" in message, message
