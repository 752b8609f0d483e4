"""What a user sees for each config or sample-sheet mistake, and what `virnucflow check` finds before a run.

Most cases call the checks in-process; a few run the real `virnucflow check` and `snakemake --dry-run` to
show what reaches the console: one line per mistake, no schema dump, no traceback, nothing run."""

import copy
import os

import pytest
import yaml

from conftest import run_cli
from virnucflow import preflight
from virnucflow.config_check import config_problems, fill_defaults, load_config_file, load_schema
from virnucflow.workflow_files import schema_dir
from virnucflow.embedding_settings import EmbeddingSettings
from virnucflow.errors import InputError
from virnucflow.sample_sheet import read_sample_sheet
from workflow_runs import REPO, snakemake, write_config

SCHEMA = load_schema(schema_dir() / "config.schema.yaml")
ROW_SCHEMA = load_schema(schema_dir() / "samples.schema.yaml")
DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def _nested(section, **values):
    return lambda c: c.setdefault(section, {}).update(values)


# (what the user wrote, the key or row the message must name, the fix it must give)
CONFIG_MISTAKES = {
    "typo_key": (lambda c: c.update(record_per_file=10), "`record_per_file`", "did you mean `records_per_file`?"),
    "quoted_number": (lambda c: c.update(chunk_size="500"), "chunk_size is the string '500'",
                      "write 500 without quotes"),
    "chunk_size_400": (lambda c: c.update(chunk_size=400), "chunk_size is 400", "allowed values are 300, 500"),
    "zero_records": (lambda c: c.update(records_per_file=0), "records_per_file is 0", "a whole number at least 1"),
    "negative_records": (lambda c: c.update(records_per_file=-5), "records_per_file is -5", "at least 1"),
    "fraction_records": (lambda c: c.update(records_per_file=2.5), "records_per_file is 2.5", "a whole number"),
    "yes_string": (lambda c: c.update(keep_intermediate="yes"), "keep_intermediate is the string 'yes'",
                   "write true or false, without quotes"),
    "bad_mode": (_nested("embedding", mode="fastest"), "embedding.mode is 'fastest'",
                 "allowed values are auto, exact, fast"),
    "bad_device": (_nested("embedding", device="gpu"), "embedding.device is 'gpu'", "cpu, cuda or cuda:N"),
    "nested_typo_embedding": (_nested("embedding", devices="cpu"), "`devices` under embedding",
                              "did you mean `device`?"),
    "nested_typo_models": (_nested("models", esm="x.pt"), "`esm` under models", "did you mean `esm2`?"),
    "key_in_wrong_section": (lambda c: c.update(device="cpu"), "`device` in config",
                             "it belongs under embedding: (`embedding.device`)"),
    "gpus_as_text": (_nested("embedding", gpus="0,1"), "embedding.gpus is the string '0,1'",
                     "write a list in brackets, e.g. [0,1]"),
    "negative_gpu": (_nested("embedding", gpus=[-1]), "embedding.gpus[0] is -1", "at least 0"),
    "no_classifier": (lambda c: c.update(chunk_size=300, models=dict(c["models"], classifiers={"500": "m.pth"})),
                      "models.classifiers has no classifier for chunk_size 300", 'add "300": models/300_model.pth'),
    "classifier_key": (lambda c: c["models"]["classifiers"].update({"400": "m.pth"}),
                       "models.classifiers has the key '400'", "its keys are 300, 500"),
    "missing_samples": (lambda c: c.pop("samples"), "missing key `samples` in the config", "add it"),
    "missing_esm2": (lambda c: c["models"].pop("esm2"), "missing key `esm2` under models", "add it"),
    "empty_section": (lambda c: c.update(embedding=None), "embedding has nothing under it", "add keys under"),
    "fraction_above_1": (_nested("contigs", min_viral_fraction=2), "contigs.min_viral_fraction is 2", "at most 1"),
    "bad_sha256": (_nested("models", unsafe_trust_pickle_sha256=["abc"]),
                   "models.unsafe_trust_pickle_sha256[0] is 'abc'", "64 hex digits"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(CONFIG_MISTAKES))
def test_each_config_mistake_is_one_line_naming_the_key_and_the_fix(case):
    change, names, fix = CONFIG_MISTAKES[case]
    config = copy.deepcopy(DEMO)
    change(config)
    problems = config_problems(config, SCHEMA)
    assert len(problems) == 1, problems
    assert "\n" not in problems[0] and names in problems[0] and fix in problems[0], problems[0]


@pytest.mark.unit
def test_the_demo_config_has_no_problem_and_gets_the_defaults():
    config = copy.deepcopy(DEMO)
    assert config_problems(config, SCHEMA) == []
    fill_defaults(config, SCHEMA)
    assert config["records_per_file"] == 40 and config["keep_intermediate"] is False
    assert config["embedding"]["gpus"] is None and config["embedding"]["sidecar"] is True
    assert config["contigs"] == {"min_viral_fraction": 0.5} and config["report"] == {"top_contigs": 10}


@pytest.mark.unit
def test_a_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("samples: s.tsv\nchunk_size: 500\nmodels:\n  esm2: [x.pt\n  dnabert_s: d\n")
    with pytest.raises(InputError) as caught:
        load_config_file(bad)
    message = str(caught.value)
    assert "\n" not in message and f"{bad} line 5" in message and "YAML syntax error" in message


SHEET_MISTAKES = {
    "commas": ("sample,fasta\ns1,{fa}\n", "must be tab-separated (line 1 has commas)"),
    "spaces": ("sample fasta\ns1 {fa}\n", "must be tab-separated (line 1 has spaces)"),
    "row_with_spaces": ("sample\tfasta\ns1 {fa}\n", "must be tab-separated (line 2 has spaces)"),
    "missing_column": ("sample\treads\ns1\t{fa}\n", "line 1: no `fasta` column (the header has sample, reads)"),
    "duplicate": ("sample\tfasta\ns1\t{fa}\ns1\t{fa}\n", "line 3: sample 's1' is listed twice (first on line 2)"),
    "empty": ("", "is empty: write the header `sample<TAB>fasta`"),
    "header_only": ("sample\tfasta\n", "lists no samples: add one row per sample"),
    "missing_fasta": ("sample\tfasta\ns1\tnope.fa\n", "line 2: sample 's1': FASTA 'nope.fa' does not exist: fix the path"),
    "bad_name": ("sample\tfasta\nbad name!\t{fa}\n", "line 2: sample is 'bad name!': expected a name of letters"),
    "empty_fasta": ("sample\tfasta\ns1\t\n", "line 2: fasta is empty"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(SHEET_MISTAKES))
def test_each_sample_sheet_mistake_is_one_line_naming_the_row(tmp_path, case):
    text, expected = SHEET_MISTAKES[case]
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">r1\nACGT\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(text.format(fa=fasta))
    _, problems = read_sample_sheet(sheet, ROW_SCHEMA)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert problems[0].startswith(str(sheet)) and expected in problems[0], problems[0]


@pytest.mark.unit
def test_a_good_sheet_reads_every_sample(tmp_path):
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">r1\nACGT\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample\tfasta\tnote\ns1\t{fasta}\tx\n\ns2\t{fasta}\ty\n")
    assert read_sample_sheet(sheet, ROW_SCHEMA) == ({"s1": str(fasta), "s2": str(fasta)}, [])
    assert read_sample_sheet(tmp_path / "nope.tsv", ROW_SCHEMA)[1] == [
        f"samples: the sample sheet {tmp_path / 'nope.tsv'} does not exist: fix the path in `samples`"]


# --- models, GPUs, disk -------------------------------------------------------------------------------------

@pytest.mark.unit
def test_model_problems_name_the_key_of_a_missing_or_wrong_model(demo_models):
    good = EmbeddingSettings(esm2=str(demo_models / "esm2_t2_demo.pt"), dnabert_s=str(demo_models / "dnabert_s_demo"))
    assert preflight.model_problems(good, str(demo_models / "500_model.pth"), 500) == []
    wrong = good.replace(esm2=str(demo_models / "500_model.pth"))
    problems = preflight.model_problems(wrong, str(demo_models / "missing_500.pth"), 500)
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert problems[0].startswith("config models.esm2:") and "is not a fair-esm ESM-2 checkpoint" in problems[0]
    assert problems[1].startswith("config models.classifiers.500: classifier file") and "fetch-models" in problems[1]


def _torch(cuda, gpus):
    return lambda: {"torch": "2.6.0", "cuda": cuda, "gpus": gpus}


def _never():
    raise AssertionError("torch was asked although no GPU is needed")


@pytest.mark.unit
def test_gpu_problems_from_what_torch_reports():
    assert preflight.gpu_problems("cpu", [3], 8, probe=_never) == []
    assert preflight.gpu_problems("auto", None, 0, probe=_never) == []  # no GPU visible: the CPU
    assert preflight.gpu_problems("cuda", [0, 1], 2, probe=_torch("12.4", 2)) == []
    (missing,) = preflight.gpu_problems("cuda", [0, 3], 1, probe=_torch("12.4", 2))
    assert missing.startswith("embedding.gpus asks for GPU 3, but torch sees only GPUs 0-1")
    (missing,) = preflight.gpu_problems("cuda:2", None, 1, probe=_torch("12.4", 1))
    assert missing == "embedding.device asks for GPU 2, but torch sees only GPU 0: set embedding.device: cuda:0 or lower, or auto"
    (cpu_torch,) = preflight.gpu_problems("auto", [0], 0, probe=_torch(None, 0))
    assert "has no CUDA (no GPU use): install a CUDA build of torch" in cpu_torch and "embedding.device: cpu" in cpu_torch
    (none,) = preflight.gpu_problems("cuda", None, 0, probe=_torch("12.4", 0))
    assert "torch sees no GPU" in none


def _fake_machine(tmp_path, monkeypatch, cuda, gpus):
    """A torch package whose version.py says `cuda` (its __init__ fails if imported) and an nvidia-smi that lists
    `gpus` GPUs, first on the paths."""
    package = tmp_path / "site" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the preflight imported torch')\n")
    (package / "version.py").write_text(
        "from typing import Optional\n__all__ = ['__version__', 'cuda']\n__version__ = '2.9.0+test'\n"
        f"debug = False\ncuda: Optional[str] = {cuda!r}\nhip: Optional[str] = None\n")
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i})'\n" for i in range(gpus)))
    smi.chmod(0o755)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(preflight, "probe_torch", _never)


@pytest.mark.unit
def test_the_gpu_check_reads_torch_and_nvidia_smi_without_importing_torch(tmp_path, monkeypatch):
    _fake_machine(tmp_path, monkeypatch, "12.8", 2)
    assert preflight.probe_gpus() == {"torch": "2.9.0+test", "cuda": "12.8", "gpus": 2}
    assert preflight.gpu_problems("cuda", [0, 1], 2) == []
    (missing,) = preflight.gpu_problems("cuda:2", None, 2)
    assert missing.startswith("embedding.device asks for GPU 2, but torch sees only GPUs 0-1")
    # torch counts CUDA_VISIBLE_DEVICES' ordinals up to the first that does not exist
    for cvd, count in (("1", 1), ("0,5,1", 1), ("3", 0), ("-1", 0), ("1,0", 2)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
        assert preflight.probe_gpus()["gpus"] == count, cvd


@pytest.mark.unit
def test_a_cpu_torch_is_named_without_importing_it(tmp_path, monkeypatch):
    _fake_machine(tmp_path, monkeypatch, None, 1)
    (cpu_torch,) = preflight.gpu_problems("cuda", None, 1)
    assert "torch 2.9.0+test has no CUDA (no GPU use): install a CUDA build of torch" in cpu_torch


@pytest.mark.unit
def test_without_nvidia_smi_torch_itself_is_asked(tmp_path, monkeypatch):
    _fake_machine(tmp_path, monkeypatch, "12.8", 1)
    (tmp_path / "bin" / "nvidia-smi").unlink()
    monkeypatch.setattr(preflight, "probe_torch", lambda: {"torch": "2.9.0+test", "cuda": "12.8", "gpus": 3})
    assert preflight.probe_gpus()["gpus"] == 3
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # GPUs named by UUID: torch too
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: x'\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0f3a")
    assert preflight.probe_gpus()["gpus"] == 3


@pytest.mark.unit
def test_the_installed_torch_read_without_import_is_what_importing_it_says():
    build = preflight.torch_build()
    child = preflight.probe_torch()
    assert build == {"torch": child["torch"], "cuda": child["cuda"]}


@pytest.mark.unit
def test_disk_rule_and_a_full_disk(tmp_path):
    plain, gz = tmp_path / "a.fa", tmp_path / "b.fa.gz"
    plain.write_bytes(b"A" * 1000)
    gz.write_bytes(b"x" * 100)
    assert preflight.input_bases([plain, gz]) == 1400
    assert preflight.disk_needed(10**6, 500) == preflight.GIB + 10**6 * 29
    assert preflight.disk_needed(10**6, 300) == preflight.GIB + 10**6 * 47
    assert preflight.disk_problems([plain], 500, tmp_path, free=2 * preflight.GIB)[0] == []
    (problem,), line = preflight.disk_problems([plain], 500, tmp_path / "not_yet", free=preflight.GIB // 2)
    assert problem.startswith(f"only 0.5 GiB free in {tmp_path}, the run needs at least 1.0 GiB")
    assert "29 bytes per input base at chunk_size 500" in problem and "free some space" in problem


@pytest.mark.unit
def test_the_mode_line_says_which_numerics_run_where():
    auto = EmbeddingSettings()
    assert preflight.mode_line(auto, ["cuda:0", "cuda:1"], True) == (
        "embedding: fast (fp16, packed batches) on cuda:0, cuda:1, through resident sidecar(s)")
    assert "exact (fp32, the original's numbers) on cpu" in preflight.mode_line(auto, ["cpu"], True)
    assert "exact (fp32" in preflight.mode_line(auto.replace(mode="exact"), ["cuda:0"], False)


# --- the real commands --------------------------------------------------------------------------------------

@pytest.mark.process
def test_check_passes_the_demo_config_and_says_the_mode():
    proc = run_cli("check", "--configfile", "config/demo.yaml", "-d", str(REPO))
    assert "embedding: exact (fp32, the original's numbers) on cpu" in proc.stdout
    assert "samples: 2 in config/demo_samples.tsv" in proc.stdout and "disk: " in proc.stdout
    assert proc.stdout.rstrip().endswith("OK: config/demo.yaml is ready to run")


@pytest.mark.process
def test_check_lists_every_problem_and_exits_1(tmp_path, demo_models):
    config = write_config(tmp_path, demo_models=False, record_per_file=3)
    proc = run_cli("check", "--configfile", str(config), "-d", str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{config}: unknown key `record_per_file` in config: did you mean `records_per_file`?" in proc.stderr
    models = {"esm2": str(tmp_path / "missing.pt"), "dnabert_s": str(demo_models / "dnabert_s_demo"),
              "classifiers": {"500": str(demo_models / "500_model.pth")}}
    config = write_config(tmp_path / "run2", demo_models=False, models=models, embedding={"device": "cuda", "gpus": [7]})
    proc = run_cli("check", "--configfile", str(config), "-d", str(tmp_path / "run2"), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 3, proc.stderr  # the model, the GPU, the count
    assert lines[0].startswith("config models.esm2: ESM-2 checkpoint not found")
    assert "embedding.gpus" in lines[1] and "GPU" in lines[1] and "embedding.device: cpu" in lines[1]


@pytest.mark.process
def test_check_bad_arguments_and_a_broken_yaml(tmp_path):
    proc = run_cli("check", "--configfile", str(tmp_path / "nope.yaml"), check=False)
    assert proc.returncode == 2 and "nope.yaml does not exist" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("samples: s.tsv\n\tchunk_size: 500\n")
    proc = run_cli("check", "--configfile", str(bad), check=False)
    assert proc.returncode == 1 and f"{bad} line 2, column 1: YAML syntax error" in proc.stderr


def _console(proc):
    """What Snakemake printed from the first line that is not its banner on."""
    lines = proc.stdout.strip().splitlines()
    if "Building DAG of jobs..." in lines:
        lines = lines[lines.index("Building DAG of jobs...") + 1:]
    return lines


@pytest.mark.process
def test_snakemake_prints_a_sample_sheet_mistake_as_one_line(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "samples.tsv").write_text(f"sample,fasta\ns1,{REPO / 'resources/demo/phage_mix.fa'}\n")
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines() == [
        f"{tmp_path / 'samples.tsv'}: the sample sheet must be tab-separated (line 1 has commas): put one tab "
        "between the sample name and the FASTA path"], proc.stdout
    assert config.exists() and not (tmp_path / "results").exists()


@pytest.mark.workflow  # a real run (not a dry run); it stops while Snakemake builds its plan
def test_snakemake_stops_before_chunking_on_a_missing_model_and_gpu(tmp_path, demo_models):
    models = {"esm2": str(tmp_path / "missing.pt"), "dnabert_s": str(demo_models / "dnabert_s_demo"),
              "classifiers": {"500": str(demo_models / "500_model.pth")}}
    write_config(tmp_path, demo_models=False, models=models, embedding={"device": "cuda", "gpus": [7]})
    proc = snakemake(tmp_path, "--cores", "1", check=False, env={"CUDA_VISIBLE_DEVICES": ""})
    lines = _console(proc)
    assert proc.returncode == 1 and len(lines) == 2, proc.stdout[-3000:]
    assert lines[0].startswith("config models.esm2: ESM-2 checkpoint not found: ")
    assert lines[1].startswith("embedding.device is cuda and embedding.gpus is [7], but")
    assert not (tmp_path / "results").exists() and not os.path.exists(tmp_path / "logs")


@pytest.mark.process
def test_snakemake_own_message_for_a_broken_yaml_is_two_lines(tmp_path):
    """Snakemake reads --configfile before the workflow: its words, not ours (`virnucflow check` names the line)."""
    write_config(tmp_path)
    (tmp_path / "bad.yaml").write_text("samples: s.tsv\n\tchunk_size: 500\n")
    proc = snakemake(tmp_path, "-n", config=tmp_path / "bad.yaml", check=False)
    assert proc.returncode == 1 and len(proc.stdout.strip().splitlines()) <= 2, proc.stdout
    assert "Config file is not valid JSON or YAML" in proc.stdout


@pytest.mark.unit
def test_the_schema_offers_the_settings_choices():
    """The schema's lists of choices are the settings' own (EmbeddingSettings), so that no value is valid in
    one and refused by the other."""
    embedding = SCHEMA["properties"]["embedding"]["properties"]
    for field in EmbeddingSettings.__dataclass_fields__.values():
        choices, key = field.metadata["choices"], field.metadata["config"]
        if choices and key and key.startswith("embedding."):
            assert embedding[key.split(".", 1)[1]]["enum"] == list(choices), key
