"""Preflight: what would stop a run, found before any work, each problem one line that names the fix.

`virnucflow check` runs all of it; the workflow checks the config and sample sheet when it is parsed and
the rest (`run_problems`) before its first job. Checked: the config and the sample sheet
(virnucflow.config_check, virnucflow.sample_sheet); the model files (virnucflow.model_check, and the
fetch manifest's sha256 and size through virnucflow.fingerprint); the GPUs asked for exist and the installed
torch can use them; free disk space. Nothing here imports torch: which torch is installed and whether it was
built with CUDA is read from its `version.py`, and the GPUs are counted by nvidia-smi as torch would number them
(CUDA_VISIBLE_DEVICES applied). Only where that is not enough (no nvidia-smi, GPUs named by UUID) a child process
imports torch and asks it, which costs 2-4 s of every run's start on a GPU machine.

The disk rule: the merged features of a sample's parts stay on disk until it is classified, so the working
directory needs at least 1 GiB plus, per input base, 4 bytes x 3328 features (the real models' 768 + 2560)
for one kept frame per chunk, plus 3 bytes for the chunked and translated copies; a gzipped FASTA counts
as 4 times its size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from virnucflow.errors import InputError

GIB = 1 << 30
FEATURES = 768 + 2560  # DNABERT-S + ESM-2 3B vector widths: one merged row per kept frame
GZIP_RATIO = 4


def stop(problems: list[str]) -> None:
    """Print each problem to stderr and exit 1: what the workflow does with them (no traceback)."""
    if problems:
        print("\n".join(problems), file=sys.stderr, flush=True)
        sys.exit(1)


# --- models ---------------------------------------------------------------------------------------------

def model_problems(settings, classifier: str, chunk_size) -> list[str]:
    """Each configured model exists, is the kind its key claims, and matches its fetch manifest."""
    from virnucflow.fingerprint import fingerprint, model_fingerprints
    from virnucflow.model_check import check_classifier, check_dnabert_s, check_esm2

    problems = []
    checks = [(lambda: check_esm2(settings.esm2), lambda: model_fingerprints(settings.esm2, None)),
              (lambda: check_dnabert_s(settings.dnabert_s, settings.dnabert_revision),
               lambda: model_fingerprints(None, settings.dnabert_s, settings.dnabert_revision)),
              (lambda: check_classifier(classifier, f"models.classifiers.{chunk_size}"),
               lambda: fingerprint(classifier))]
    for kind, sums in checks:
        try:
            kind()
            sums()
        except InputError as exc:
            problems.append(str(exc))
    return problems


# --- GPUs -----------------------------------------------------------------------------------------------

def _nvidia_smi_count() -> int | None:
    """GPUs that nvidia-smi lists, or None when it cannot be run."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def visible_gpu_count() -> int:
    """GPUs this process may use, without torch: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    return _nvidia_smi_count() or 0


_PROBE = ("import json, torch\n"
          "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
          "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpus': n}))")


def probe_torch(python: str = sys.executable, timeout: float = 300) -> dict:
    """{'torch': version, 'cuda': CUDA version or None, 'gpus': count}, or {'error': why}, from a child."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (proc.stderr.strip().splitlines() or ["no answer"])[-1]}


def torch_build() -> dict | None:
    """{'torch': version, 'cuda': CUDA version or None} of the installed torch, read from its version.py
    without importing it; None where that file is missing or unusual."""
    import ast
    import importlib.machinery

    try:
        spec = importlib.machinery.PathFinder.find_spec("torch")  # on sys.path, whether imported or not
        tree = ast.parse(Path(spec.origin).with_name("version.py").read_text())
    except (AttributeError, TypeError, ValueError, OSError, SyntaxError):  # not installed, or not as usual
        return None
    values = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if isinstance(target, ast.Name):
            try:
                values[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    if not isinstance(values.get("__version__"), str) or "cuda" not in values:
        return None
    return {"torch": values["__version__"], "cuda": values["cuda"]}


def probe_gpus() -> dict:
    """What `probe_torch` answers, without importing torch where nvidia-smi and torch's version.py tell it:
    torch numbers the GPUs of CUDA_VISIBLE_DEVICES' ordinals up to the first that does not exist."""
    build = torch_build()
    if build is None:
        return probe_torch()
    if not build["cuda"]:
        return {**build, "gpus": 0}
    present = _nvidia_smi_count()
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if present is None or (cvd is not None and not all(d.strip().lstrip("-").isdigit() for d in cvd.split(",") if d.strip())):
        return probe_torch()
    if cvd is None:
        return {**build, "gpus": present}
    gpus = 0
    for entry in (d.strip() for d in cvd.split(",")):
        if not entry or int(entry) < 0 or int(entry) >= present:
            break
        gpus += 1
    return {**build, "gpus": gpus}


def asked_gpus(device: str, gpus, visible: int) -> tuple[list[tuple[str, int]], bool]:
    """([(config key, GPU ordinal)] that must exist, whether a GPU is needed at all)."""
    if device == "cpu":
        return [], False
    ids = [("embedding.gpus", g) for g in gpus or []]
    if device.startswith("cuda:"):
        ids.append(("embedding.device", int(device[5:])))
    return ids, bool(ids) or device == "cuda" or visible > 0


def gpu_problems(device: str, gpus, visible: int, probe=probe_gpus) -> list[str]:
    """The GPUs that the config asks for exist, and the installed torch can use them."""
    ids, needed = asked_gpus(device, gpus, visible)
    if not needed:
        return []
    asking = f"embedding.device is {device}" + (f" and embedding.gpus is {list(gpus)}" if gpus else "")
    found = probe()
    if "error" in found:
        return [f"{asking}, but torch does not import ({found['error']}): install torch, or set embedding.device: cpu"]
    if not found.get("cuda"):
        return [f"{asking}, but the installed torch {found['torch']} has no CUDA (no GPU use): install a CUDA build of torch "
                "(pytorch.org), or set embedding.device: cpu"]
    count = found["gpus"]
    if count == 0:
        return [f"{asking}, but torch sees no GPU (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run on a GPU machine, or set embedding.device: cpu"]
    seen = "GPU 0" if count == 1 else f"GPUs 0-{count - 1}"
    fixes = {"embedding.gpus": "use an existing ordinal, or set embedding.gpus: null (every visible GPU)",
             "embedding.device": f"set embedding.device: cuda:{count - 1} or lower, or auto"}
    return [f"{key} asks for GPU {g}, but torch sees only {seen}: {fixes[key]}" for key, g in ids if g >= count]


def mode_line(settings, devices: list[str], sidecar: bool) -> str:
    """Which numeric mode runs on which device, in words."""
    words = {"exact": "exact (fp32, the original's numbers)", "fast": "fast (fp16, packed batches)"}
    by_mode = {}
    for d in devices:
        by_mode.setdefault(settings.resolved_mode(d), []).append(d)
    parts = [f"{words[mode]} on {', '.join(on)}" for mode, on in by_mode.items()]
    how = "resident sidecar(s)" if sidecar else "each embedding job (in-process)"
    return f"embedding: {', '.join(parts)}, through {how}"


# --- disk -----------------------------------------------------------------------------------------------

def input_bases(fastas) -> int:
    """Bases in the inputs, estimated from the file sizes (a gzipped file counts GZIP_RATIO times)."""
    total = 0
    for path in fastas:
        size = os.path.getsize(path)
        total += size * GZIP_RATIO if str(path).endswith(".gz") else size
    return total


def disk_needed(bases: int, chunk_size: int) -> int:
    """Bytes of free space a run needs at least (the rule in this module's docstring)."""
    return GIB + bases * (4 * FEATURES // int(chunk_size) + 3)


def disk_problems(fastas, chunk_size: int, directory=".", free: int | None = None) -> tuple[list[str], str]:
    """([a problem if the working directory's disk is too full], a line saying the rule and the numbers)."""
    directory = Path(directory).resolve()
    existing = next(p for p in [directory, *directory.parents] if p.exists())
    free = shutil.disk_usage(existing).free if free is None else free
    needed = disk_needed(input_bases(fastas), chunk_size)
    rule = (f"1 GiB + {4 * FEATURES // int(chunk_size) + 3} bytes per input base at chunk_size {chunk_size}, "
            "gzip counted x4")
    line = f"disk: {free / GIB:.1f} GiB free in {existing}, the run needs at least {needed / GIB:.1f} GiB ({rule})"
    if free >= needed:
        return [], line
    return [f"only {free / GIB:.1f} GiB free in {existing}, the run needs at least {needed / GIB:.1f} GiB ({rule}): "
            "free some space, or run in a directory on a larger disk"], line


# --- the whole check ------------------------------------------------------------------------------------

def run_problems(config: dict, samples: dict, classifier: str, directory=".", models=True, gpus=True,
                 visible: int | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) of a valid config and sample sheet: models, GPUs, disk, and the mode per device."""
    from virnucflow.embedding_settings import EmbeddingSettings

    settings = EmbeddingSettings.from_config(config)
    embedding = config.get("embedding") or {}
    problems, notes = [], []
    if config.get("demo_models"):
        notes.append("models: the demo's tiny models, made by the workflow (their scores mean nothing)")
    elif models:
        found = model_problems(settings, classifier, config["chunk_size"])
        problems += found
        if not found:
            notes.append(f"models: {settings.esm2}, {settings.dnabert_s}, {classifier}: present and checked")
    visible = visible_gpu_count() if visible is None else visible
    external = embedding.get("endpoint_file") if embedding.get("sidecar", True) else None
    if external:  # a sidecar started by hand: its device is its own
        notes.append(f"embedding: through the sidecar of {external} (its own device and mode)")
    else:
        if gpus:
            problems += gpu_problems(settings.device, embedding.get("gpus"), visible)
        devices = (["cpu"] if settings.device == "cpu" else
                   [f"cuda:{g}" for g in embedding["gpus"]] if embedding.get("gpus") else
                   [settings.device] if settings.device.startswith("cuda:") else
                   [f"cuda:{g}" for g in range(visible)] or (["cuda:0"] if settings.device == "cuda" else ["cpu"]))
        notes.append(mode_line(settings, devices, embedding.get("sidecar", True)))
    disk, line = disk_problems(samples.values(), config["chunk_size"], directory)
    problems += disk
    notes.append(line)
    return problems, notes


def check(configfile, directory=".") -> tuple[list[str], list[str]]:
    """(problems, notes) of a config file, everything that `virnucflow check` reports."""
    from virnucflow.config_check import config_problems, fill_defaults, load_config_file, load_schema
    from virnucflow.workflow_files import schema_dir
    from virnucflow.sample_sheet import read_sample_sheet

    schemas = schema_dir()
    try:
        config = load_config_file(configfile)
    except InputError as exc:
        return [str(exc)], []
    schema = load_schema(schemas / "config.schema.yaml")
    config_errors = [f"{configfile}: {m}" for m in config_problems(config, schema)]
    samples, sheet = {}, []
    if isinstance(config, dict) and isinstance(config.get("samples"), str):
        samples, sheet = read_sample_sheet(config["samples"], load_schema(schemas / "samples.schema.yaml"))
    if config_errors:
        return config_errors + sheet, []
    fill_defaults(config, schema)
    classifiers = config["models"]["classifiers"]
    size = config["chunk_size"]
    classifier = classifiers.get(size, classifiers.get(str(size)))
    more, notes = run_problems(config, samples, classifier, directory)
    notes.insert(0, f"samples: {len(samples)} in {config['samples']}")
    return sheet + more, notes
