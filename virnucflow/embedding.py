"""In-process embedding of one part, as the original does it: load each model, embed, free it.

Runs the exact numerics (fp32, one sequence per forward); the packed fp16 `fast` mode exists only in the
sidecar, so a run that asks for fast mode without a sidecar is refused rather than silently made exact.
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
    loaders = {
        "dnabert_s": lambda: load_dnabert_s(settings.dnabert_s, settings.dnabert_revision, device=device,
                                            trusted_sha256=settings.unsafe_trust_pickle),
        "esm2": lambda: load_esm2(settings.esm2, device=device, trusted_sha256=settings.unsafe_trust_pickle),
    }
    arrays, names = {}, {}
    for model_name, (ids, seqs) in parts.items():
        if not getattr(settings, model_name):
            raise InputError(f"--{model_name.replace('_', '-')} is needed to embed in this process")
        started = time.perf_counter()
        model = loaders[model_name]()
        loaded = time.perf_counter()
        arrays[model_name] = model.embed(seqs)
        names[model_name] = model.name
        log.info("%s: %d sequences, load %.1f s, embed %.1f s", model.name, len(ids), loaded - started,
                 time.perf_counter() - loaded)
        del model
    fingerprints = model_fingerprints(settings.esm2 if "esm2" in parts else None,
                                      settings.dnabert_s if "dnabert_s" in parts else None, settings.dnabert_revision)
    served = {"mode": "exact", "device": device, "gpu_name": gpu_name(device), "fingerprints": fingerprints,
              "models": {m: {"source": getattr(settings, m), "name": names[m]} for m in parts},
              "versions": package_versions()}
    return arrays, part_record("in-process", served)
