"""A sidecar process: its configuration, and the two threads that serve it.

Lifecycle: bind and write the endpoint file (before torch is even imported; sidecar.listener) -> the
compute thread loads the models (sidecar.compute) while the socket thread already answers `ping` with
"loading" (sidecar.router) -> "ready" -> serve -> stop on SIGTERM/SIGINT, a `stop` request, an orphan
condition (watched pid gone, endpoint file removed or taken over) or the idle timeout -> drain accepted
work (bounded by --drain-timeout), reject the rest, remove the endpoint file and socket, exit 0.
"""

import dataclasses
import logging
import os
import sys
import time

from virnucflow.provenance import package_versions

from . import leases, protocol, rendezvous
from .backends import WHOLE_REQUESTS
from .batcher import Batcher
from .compute import Compute
from .listener import Listener, StartupError, refuse_if_taken
from .router import Router

log = logging.getLogger("sidecar")

SWITCH_INTERVAL = 0.0005  # seconds; see run()

__all__ = ["ServeConfig", "StartupError", "serve", "run"]


@dataclasses.dataclass
class ServeConfig:
    """What one server runs with: the embedding settings (resolved for its device) and where it listens.
    Built by `from_settings`; the defaults of the settings live in virnucflow.embedding_settings."""

    endpoint_file: str
    models: dict  # protocol model name -> (source, revision)
    device: str
    mode: str  # exact | fast
    fast_dnabert_precision: str  # fast mode's DNABERT-S numerics (virnucflow.models.mosaicbert_fast)
    idle_timeout: float
    max_batch_tokens: int
    max_queued_tokens: int
    max_queued_requests: int
    memory_fraction: float
    threads: int
    drain_timeout: float
    log_interval: float
    dedup_cache_mb: float  # per model; 0 disables deduplication
    dedup_cache_entries: int
    unsafe_trust_pickle: tuple  # sha256s of model files that may be unpickled in full (virnucflow.safe_load)
    reply_cache_mb: float  # recent results kept for clients that resend a request id
    compile_cache_dir: str  # torch.compile's caches, per model fingerprints (None: torch's default place)
    tcp: str = None  # "HOST:PORT"; None = local ipc socket
    secret_file: str = None
    socket_dir: str = None
    watch_pid: int = None
    lease_dir: str = None  # the samples' leases on this sidecar (sidecar.leases)
    limits: protocol.Limits = protocol.LIMITS  # what one message may hold (sizes, depth, sequence lengths)

    @classmethod
    def from_settings(cls, settings, endpoint_file, **listen):
        """`settings`: an EmbeddingSettings; `listen`: tcp, secret_file, socket_dir, watch_pid, lease_dir."""
        from .backends import resolve_device

        device = resolve_device(settings.device)
        mode = settings.resolved_mode(device)
        return cls(endpoint_file=endpoint_file, models=settings.models(), device=device, mode=mode,
                   fast_dnabert_precision=settings.fast_dnabert_precision,
                   idle_timeout=settings.idle_timeout, max_batch_tokens=settings.batch_tokens(mode),
                   max_queued_tokens=settings.max_queued_tokens, max_queued_requests=settings.max_queued_requests,
                   memory_fraction=settings.memory_fraction, threads=settings.threads,
                   drain_timeout=settings.drain_timeout, log_interval=settings.log_interval,
                   dedup_cache_mb=settings.dedup_cache_mb, dedup_cache_entries=settings.dedup_cache_entries,
                   unsafe_trust_pickle=settings.unsafe_trust_pickle, reply_cache_mb=settings.reply_cache_mb,
                   compile_cache_dir=settings.compile_cache_dir,
                   limits=settings.limits(), **listen)


def serve(cfg):
    """Serve until stopped; returns the process exit code."""
    pid, started = os.getpid(), time.time()
    refuse_if_taken(cfg.endpoint_file, pid)
    if cfg.watch_pid and not rendezvous.pid_alive(cfg.watch_pid):
        # started for a run that has ended (by a job that a killed Snakemake left running): write no
        # endpoint file that would outlive the run, however briefly
        raise StartupError(f"watched pid {cfg.watch_pid} is already gone; not starting")
    # fast mode: DNABERT-S batches get 4x the budget (a 768-wide model needs more tokens per launch)
    per_model = {"dnabert_s": 4 * cfg.max_batch_tokens} if cfg.mode == "fast" else {}
    batcher = Batcher(cfg.max_batch_tokens, cfg.max_queued_tokens, cfg.max_queued_requests,
                      model_batch_tokens=per_model, whole_jobs=WHOLE_REQUESTS.get(cfg.mode, ()))
    listener = Listener(cfg)
    router = None
    try:
        listener.write_endpoint_file(pid, started)
        log.info("pid %d bound %s, endpoint file %s; loading %s on %s", pid, listener.endpoint, cfg.endpoint_file,
                 ", ".join(cfg.models), cfg.device)
        compute = Compute(cfg, batcher, lambda jobs: router.on_finished(jobs))
        router = Router(cfg, listener, batcher, compute, pid, started, package_versions())
        router.install_signals()
        compute.start()
        code = router.loop()
        compute.stop()
        return code
    finally:
        removed = listener.close(pid)
        reason = (router and router.stop_reason) or (router and router.compute.load_error) or "exit"
        log.info("stopped (%s); endpoint file %s", reason, "removed" if removed else "left to its new owner or gone")
        if cfg.lease_dir and not (router and router.leases_released):
            # stopped with samples still to embed: their leases go, so that the next run starts a new sidecar
            log.info("removed %d lease(s) in %s", leases.release_all(cfg.lease_dir), cfg.lease_dir)


def run(settings, endpoint_file, **listen):
    """Entry point of `sidecar serve`: returns the exit code. Call before torch is imported.

    `settings`: an EmbeddingSettings; `listen`: tcp, secret_file, socket_dir, watch_pid, lease_dir."""
    from .backends import prepare_torch_environment

    prepare_torch_environment()
    # The compute thread issues many short GPU launches, each needing the GIL; with the default 5 ms switch
    # interval a busy socket thread (decoding, tokenizing) makes it wait up to 5 ms per hand-over.
    sys.setswitchinterval(SWITCH_INTERVAL)
    code = serve(ServeConfig.from_settings(settings, endpoint_file, **listen))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The compute thread may still be inside a model load that cannot be interrupted: do not wait for it.
    os._exit(code)
