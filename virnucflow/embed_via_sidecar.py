"""The sidecar transport of the embedding step: check what the sidecar serves, then send it the part.

The only module of virnucflow that calls into the sidecar package, and only into its torch-free client
side (client, launcher, assign). Before any sequence is sent, the sidecar's own report of its models' sha256
fingerprints and numeric mode (in fast mode with its DNABERT-S precision) is compared with what this run
asks for; a sidecar that serves anything else (another checkpoint, another revision, the other mode or
precision: a hand-started sidecar shared across runs, or a stale one) is refused with one line that names
both sides.
"""

from __future__ import annotations

from virnucflow.embedding_settings import SERVE
from virnucflow.fingerprint import model_fingerprints
from virnucflow.provenance import part_record


class SidecarMismatch(Exception):
    """The sidecar serves other models or another mode than the run asks for."""


def check_served(settings, served: dict, where: str) -> None:
    """Raise SidecarMismatch unless `served` (a sidecar's status) matches `settings`."""
    wanted = model_fingerprints(settings.esm2, settings.dnabert_s, settings.dnabert_revision)
    got = served.get("fingerprints") or {}
    differ = []
    for model, sha in wanted.items():
        if got.get(model) != sha:
            source = (served.get("models") or {}).get(model, {}).get("source")
            differ.append(f"{model} {_short(got.get(model))} ({source}) but this run asks for {_short(sha)} "
                          f"({getattr(settings, model)})")
    if settings.mode != "auto" or served.get("mode") is not None:  # auto: the default on its device
        mode = settings.resolved_mode(served.get("device") or "")
        if served.get("mode") != mode:
            differ.append(f"{served.get('mode')} mode but this run asks for {mode} mode")
        elif mode == "fast" and served.get("fast_dnabert_precision") != settings.fast_dnabert_precision:
            differ.append(f"fast mode with DNABERT-S in {served.get('fast_dnabert_precision')} but this run asks "
                          f"for {settings.fast_dnabert_precision} (embedding.fast_dnabert_precision)")
    if differ:
        raise SidecarMismatch(f"{where} serves {'; '.join(differ)}; stop it (sidecar stop --endpoint-file ...) or "
                              "point the run at a sidecar with these settings")


def _short(sha):
    return f"sha256 {sha[:12]}" if isinstance(sha, str) else "no fingerprint"


def embed_via_sidecar(ns, settings, parts: dict, labels: dict):
    """{model: float32 [N, dim]} for `parts` ({model: (ids, seqs)}) and the part's provenance record;
    `labels` ({model: input file}) name the work in messages.

    With several endpoint files, the part goes to the sidecar that will finish it first (sidecar.assign);
    with --ensure the first one is started if it does not answer. If the chosen sidecar dies, the whole part
    is sent again to another (or to a fresh first one), so that one sidecar made all of a part's vectors."""
    import sys

    from sidecar.assign import choose, describe_choice
    from sidecar.client import SidecarClient, SidecarDied
    from sidecar.listen_options import listen_args

    endpoints = [str(f) for f in ns.endpoint_file or []]
    if not endpoints:
        raise ValueError("the sidecar transport needs --endpoint-file")
    home = endpoints[0]
    tokens = sum(len(s) + 2 for _, seqs in parts.values() for s in seqs)
    failed = set()
    attempts = len(endpoints) + (1 if ns.ensure else 0)
    for attempt in range(attempts):
        if ns.ensure:
            from sidecar.launcher import ensure_sidecar

            if not settings.models():
                raise ValueError("--ensure needs the models: --esm2 SOURCE and/or --dnabert-s SOURCE")
            ensure_sidecar(home, settings.to_args(SERVE) + listen_args(ns), watch_pid=ns.watch_pid, log_file=ns.log)
            failed.discard(home)
        chosen = home
        if len(endpoints) > 1:
            chosen, pongs = choose(endpoints, tokens, exclude=failed)
            print(f"embed: {describe_choice(chosen, pongs, tokens)}", file=sys.stderr, flush=True)
        try:
            with SidecarClient(chosen, **settings.client_options()) as client:
                client.wait_ready()
                served = dict(client.served, **{k: client.info.get(k) for k in ("pid", "host", "endpoint")})
                check_served(settings, served, client.describe())
                arrays = _embed_models(client, chosen, settings, parts, labels)
            return arrays, part_record("sidecar", served)
        except SidecarDied as exc:
            failed.add(chosen)
            if attempt + 1 == attempts or (not ns.ensure and failed >= set(endpoints)):
                raise
            print(f"embed: {exc}; sending the part again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _embed_models(client, endpoint_file, settings, parts, labels):
    """Every model's requests in flight at once, each model on a connection of its own (a client is not
    thread-safe), so that the sidecar's queue shows the whole part to the next part's choice."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from sidecar.client import SidecarClient

    # a message names the whole part: whichever model's request notices a failure first reports it
    label = " and ".join(labels[model] for model in parts)
    part = uuid.uuid4().hex  # the requests of both models are one part to the sidecar: oldest part first

    def one(model):
        ids, seqs = parts[model]
        with SidecarClient(endpoint_file, **settings.client_options()) as own:
            return own.embed(model, ids, seqs, label=label, part=part)

    first, *others = parts
    with ThreadPoolExecutor(max(len(others), 1)) as pool:
        futures = {model: pool.submit(one, model) for model in others}
        arrays = {first: client.embed(first, *parts[first], label=label, part=part)}
        arrays.update({model: future.result() for model, future in futures.items()})
    return {model: arrays[model] for model in parts}
