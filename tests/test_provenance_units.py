"""The embedding settings object, model fingerprints, the preflight model checks and run_info, in-process."""

import argparse
import json
import os
import time

import pytest

from virnucflow.classifier import write_random_classifier
from virnucflow.embedding_settings import CLIENT, IN_PROCESS, SERVE, EmbeddingSettings
from virnucflow.errors import InputError
from virnucflow.fingerprint import FingerprintMismatch, fingerprint, model_fingerprints, sha256_file
from virnucflow.model_check import check_classifier, check_dnabert_s, check_esm2
from virnucflow.models.dnabert_s import write_tiny_dnabert_s
from virnucflow.models.esm2 import write_tiny_esm2_checkpoint
from virnucflow.provenance import part_record, run_info, write_json

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    write_random_classifier(out / "300_model.pth", input_dim=64)
    return {
        "esm2": write_tiny_esm2_checkpoint(out / "esm2_t2_tiny.pt"),
        "dnabert_s": write_tiny_dnabert_s(out / "dnabert"),
        "classifier": out / "300_model.pth",
    }


def test_settings_from_config_reach_every_command_line():
    config = {"models": {"esm2": "e.pt", "dnabert_s": "d", "dnabert_s_revision": "abc"},
              "embedding": {"mode": "exact", "idle_timeout": 60, "max_batch_tokens": 8192, "sidecar": True}}
    settings = EmbeddingSettings.from_config(config)
    assert (settings.mode, settings.idle_timeout, settings.max_batch_tokens) == ("exact", 60.0, 8192)
    serve = settings.to_args(SERVE)
    assert serve[serve.index("--mode") + 1] == "exact" and "--idle-timeout" in serve
    assert "--mode" in settings.to_args(CLIENT) and "--max-batch-tokens" not in settings.to_args(CLIENT)
    assert "--esm2" in settings.to_args(IN_PROCESS)
    # what a command parses back is the same object
    parser = argparse.ArgumentParser()
    EmbeddingSettings.add_arguments(parser, (SERVE, CLIENT, IN_PROCESS))
    back = EmbeddingSettings.from_namespace(parser.parse_args(serve + ["--ready-timeout", "5"]))
    assert back == settings.replace(ready_timeout=5.0)


def test_defaults_are_not_passed_on():
    assert EmbeddingSettings().to_args(SERVE) == []


@pytest.mark.parametrize("embedding, message", [
    ({"mode": "fp16"}, "embedding.mode"),
    ({"max_batch_tokens": 1.5}, "embedding.max_batch_tokens"),
    ({"idle_timeout": "soon"}, "embedding.idle_timeout"),
])
def test_a_bad_setting_is_one_line_naming_its_key(embedding, message):
    with pytest.raises(InputError, match=message) as err:
        EmbeddingSettings.from_config({"models": {}, "embedding": embedding})
    assert "\n" not in str(err.value)


def test_auto_mode_is_fast_on_cuda_and_exact_on_cpu():
    settings = EmbeddingSettings()
    assert settings.resolved_mode("cuda:1") == "fast" and settings.resolved_mode("cpu") == "exact"
    assert settings.replace(mode="exact").resolved_mode("cuda:0") == "exact"


def test_fingerprints_are_cached_and_follow_the_file(models, tmp_path):
    esm = tmp_path / "esm2_copy.pt"
    esm.write_bytes(models["esm2"].read_bytes())
    first = fingerprint(esm)
    assert first == sha256_file(esm)
    cache = json.loads((tmp_path / "esm2_copy.pt.sha256.json").read_text())
    assert cache["files"]["esm2_copy.pt"]["sha256"] == first
    time.sleep(0.01)
    esm.write_bytes(models["esm2"].read_bytes() + b"\0")
    assert fingerprint(esm) != first  # a changed file is hashed again
    both = model_fingerprints(str(models["esm2"]), str(models["dnabert_s"]))
    assert set(both) == {"esm2", "dnabert_s"} and all(len(v) == 64 for v in both.values())


def test_a_file_changed_after_its_fetch_is_an_error_naming_it(models, tmp_path):
    dest = tmp_path / "fetched"
    target = dest / "300_model.pth"
    target.parent.mkdir()
    target.write_bytes(models["classifier"].read_bytes())
    manifest = {"files": {"300_model.pth": {"sha256": sha256_file(target), "size": target.stat().st_size}}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    assert fingerprint(target) == manifest["files"]["300_model.pth"]["sha256"]
    time.sleep(0.01)
    with open(target, "r+b") as handle:  # same size, other bytes, newer than the manifest
        handle.seek(100)
        handle.write(b"\xff\xfe")
    os.utime(target, None)
    with pytest.raises(FingerprintMismatch, match=r"300_model.pth.*virnucflow fetch-models --dest"):
        fingerprint(target)


def test_preflight_names_the_file_and_the_key(models, tmp_path):
    assert check_esm2(str(models["esm2"])) == models["esm2"]
    assert check_dnabert_s(str(models["dnabert_s"])) == models["dnabert_s"]
    assert check_classifier(str(models["classifier"]), "models.classifiers.300") == models["classifier"]
    cases = [
        (lambda: check_esm2(str(models["classifier"])), r"config models.esm2: .*300_model.pth is not a fair-esm"),
        (lambda: check_classifier(str(models["esm2"]), "models.classifiers.500"),
         r"config models.classifiers.500: .*esm2_t2_tiny.pt is not a VirNucPro"),
        (lambda: check_esm2(str(tmp_path / "missing.pt")), r"config models.esm2: ESM-2 checkpoint not found"),
        (lambda: check_dnabert_s(str(models["esm2"])), r"config models.dnabert_s: DNABERT-S model directory not found"),
        (lambda: check_esm2(str(models["dnabert_s"] / "config.json")), r"config models.esm2: .*not a torch file"),
    ]
    for call, pattern in cases:
        with pytest.raises(InputError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)


def test_run_info_gathers_the_parts(models, tmp_path):
    served = {"mode": "fast", "fast_dnabert_precision": "fp16", "device": "cuda:0", "gpu_name": "NVIDIA H200",
              "pid": 7, "host": "h",
              "endpoint": "ipc://x", "fingerprints": {"esm2": "a" * 64, "dnabert_s": "b" * 64},
              "models": {"esm2": {"source": "e"}}, "versions": {"torch": "2.13.0"}}
    parts = []
    for k, device in enumerate(("cuda:0", "cuda:1"), 1):
        path = tmp_path / f"output_{k}.json"
        write_json(path, part_record("sidecar", dict(served, device=device)))
        parts.append(path)
    info = run_info("s1", parts, {"path": "300_model.pth", "sha256": "c" * 64, "original": None}, 500)
    assert info["embedding"]["mode"] == "fast" and info["embedding"]["parts"] == 2
    assert info["embedding"]["fast_dnabert_precision"] == "fp16"
    assert info["embedding"]["fingerprints"]["esm2"] == "a" * 64
    assert [d["device"] for d in info["embedding"]["devices"]] == ["cuda:0", "cuda:1"]
    assert info["chunk_size"] == 500 and info["versions"]["snakemake"] and info["ended_at"]
    assert info["virnucflow"]["version"]


def test_every_config_setting_is_in_the_schema_and_documented_with_its_default():
    import yaml

    from workflow_runs import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in readme.splitlines()
            if line.startswith("| `")}
    for section in ("models", "embedding"):
        properties = schema["properties"][section]["properties"]
        for key, f in EmbeddingSettings.config_keys(section).items():
            assert key in properties, f"{section}.{key} is not in the config schema"
            assert "default" not in properties[key], f"{section}.{key}: the default lives in EmbeddingSettings"
            documented = rows.get(f"{section}.{key}")
            assert documented is not None, f"{section}.{key} is not in config/README.md"
            if key in schema["properties"][section].get("required", ()):
                assert documented == "(required)", f"{section}.{key} is required: say so in config/README.md"
                continue
            default = f.default
            shown = "null" if default is None else "[]" if default == () else f"{default:g}" \
                if isinstance(default, float) else str(default)
            assert documented.startswith(shown) or (default is None and "exact" in documented), \
                f"config/README.md shows {section}.{key} = {documented!r}, EmbeddingSettings says {shown}"
