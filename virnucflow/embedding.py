"""In-process embedding of one part, as the original does it: this process loads the models and embeds.

Runs the exact numerics (fp32, TF32 off; ESM-2 in the original's batches of the part, DNABERT-S one
sequence per forward); the packed fp16 `fast` mode exists only in the sidecar, so a run that asks for fast
mode without a sidecar is refused rather than silently made exact.
Every model is loaded before any embeds, so that a bad model file fails the job at once.
"""

import logging
import time

log = logging.getLogger(__name__)


def embed_in_process(settings, parts):
    """{model: float32 [N, dim]} for `parts` ({model: (ids, seqs)}) and the part's provenance record."""
    from sidecar.backends import gpu_name, resolve_device
    from virnucflow.errors import InputError
    from virnucflow.fingerprint import model_fingerprints
    from virnucflow.models.dnabert_s import load_dnabert_s
    from virnucflow.models.esm2 import load_esm2
    from virnucflow.provenance import package_versions, part_record

    device = resolve_device(settings.device)
    if settings.resolved_mode(device) != "exact":
        raise InputError("fast mode runs only in a sidecar; without one (embedding.sidecar: false) use mode exact")
    for model_name in parts:
        if not getattr(settings, model_name):
            raise InputError(f"--{model_name.replace('_', '-')} is needed to embed in this process")
    trusted = settings.unsafe_trust_pickle
    loaders = {
        "dnabert_s": lambda: load_dnabert_s(settings.dnabert_s, settings.dnabert_revision, device=device,
                                            trusted=trusted),
        "esm2": lambda: load_esm2(settings.esm2, device=device, trusted=trusted),
    }
    started = time.perf_counter()
    models = {name: loaders[name]() for name in parts}
    log.info("models loaded in %.1f s", time.perf_counter() - started)
    arrays = {}
    for name, (ids, seqs) in parts.items():
        started = time.perf_counter()
        arrays[name] = models[name].embed(seqs)
        log.info("%s: %d sequences, embed %.1f s", models[name].name, len(ids), time.perf_counter() - started)
    fingerprints = model_fingerprints(settings.esm2 if "esm2" in parts else None,
                                      settings.dnabert_s if "dnabert_s" in parts else None, settings.dnabert_revision)
    served = {"mode": "exact", "device": device, "gpu_name": gpu_name(device), "fingerprints": fingerprints,
              "models": {name: {"source": getattr(settings, name), "name": models[name].name} for name in parts},
              "versions": package_versions()}
    return arrays, part_record("in-process", served)
