"""The compute thread of a sidecar: load the models, then run the batcher's batches on the device.

It knows the backends and the batcher, never a socket: finished requests go back through the
`on_finished` callback, which the socket thread (sidecar.router) gives it. Loading happens here too, so
that the socket thread answers `ping` ("loading") while torch is imported and the weights are read.
"""

import collections
import logging
import threading
import time

log = logging.getLogger("sidecar")

PIPELINE_DEPTH = 2  # batches launched on the device before the compute thread waits for the oldest
POLL = 0.001  # seconds the compute thread waits for new work while a launched batch runs
IDLE_POLL = 0.5  # seconds it waits for work when nothing is in flight
EMPTY_CACHE_INTERVAL = 60.0  # seconds between returns of cached device memory while idle


class Compute:
    """The models of one sidecar and the thread that runs them.

    After `start()`, `loaded` is set once loading has ended; then either `load_error` says why it failed
    (one line), or `backends` holds every model and the thread takes batches until `stop()`.
    """

    def __init__(self, cfg, batcher, on_finished):
        self.cfg = cfg
        self.batcher = batcher
        self.on_finished = on_finished  # called with finished jobs, and with [] when loading ended badly
        self.backends = {}
        self.device = cfg.device
        self.gpu_name = None
        self.fingerprints = {}
        self.load_error = None
        self.loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-compute", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        """Ask the thread to end; wait briefly unless it is inside a model load, which cannot be interrupted."""
        self._stop.set()
        if self.loaded.is_set():
            self._thread.join(timeout=2.0)

    @property
    def ready(self):
        return self.loaded.is_set() and self.load_error is None

    def served(self, versions):
        """What produces this sidecar's vectors, for clients to check and to record with their results."""
        precision = {"fast_dnabert_precision": self.cfg.fast_dnabert_precision} if self.cfg.mode == "fast" else {}
        return {"mode": self.cfg.mode, "device": self.device, **precision, "gpu_name": self.gpu_name,
                "fingerprints": self.fingerprints, "versions": versions,
                "models": {name: {"source": src, "revision": rev, "name": self.backends[name].name,
                                  "dim": self.backends[name].dim}
                           for name, (src, rev) in self.cfg.models.items() if name in self.backends}}

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self):
        try:
            self._load()
        except BaseException as exc:  # a broken model or device: the socket thread says why, then exits
            self.load_error = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:1000]
            log.error("model loading failed: %s", self.load_error)
            self.loaded.set()
            self.on_finished([])
            return
        self.loaded.set()
        self.on_finished([])
        self._serve_batches()

    def _load(self):
        from virnucflow.fingerprint import model_fingerprints

        from . import backends

        start = time.monotonic()
        self.device = backends.configure_device(self.cfg.device, self.cfg.memory_fraction, self.cfg.threads)
        self.gpu_name = backends.gpu_name(self.device)
        esm2, dnabert = self.cfg.models.get("esm2"), self.cfg.models.get("dnabert_s")
        # before loading, so that a model file changed since its fetch stops the load
        self.fingerprints = model_fingerprints(esm2 and esm2[0], dnabert and dnabert[0], dnabert and dnabert[1])
        if self.cfg.compile_cache_dir and self.cfg.mode == "fast":  # only fast mode compiles
            log.info("compile cache: %s", backends.use_compile_cache(self.cfg.compile_cache_dir, self.fingerprints))
        if self.cfg.mode == "fast" and self.device.startswith("cuda"):  # the fast models compile on CUDA only
            backends.start_compile_warm_up(self.device)
        for name, (source, revision) in self.cfg.models.items():
            backend = backends.make_backend(
                name, source, device=self.device, revision=revision, mode=self.cfg.mode,
                cache_bytes=int(self.cfg.dedup_cache_mb * 2**20), cache_entries=self.cfg.dedup_cache_entries,
                max_batch_tokens=self.batcher.model_batch_tokens.get(name, self.cfg.max_batch_tokens),
                trusted=self.cfg.unsafe_trust_pickle, dnabert_precision=self.cfg.fast_dnabert_precision)
            backend.load()
            log.info("loaded %s from %s: %s, dim %d, %s mode, %.2f s", name, source, backend.name, backend.dim,
                     self.cfg.mode, backend.load_seconds)
            self.backends[name] = backend
        log.info("ready on %s after %.2f s", self.device, time.monotonic() - start)

    def _serve_batches(self):
        from . import backends

        last_release = time.monotonic()
        inflight = collections.deque()  # (batch, backend, launched run) in launch order
        settled = time.monotonic()  # when this thread last finished a batch or sat idle
        while not self._stop.is_set():
            # Launch up to PIPELINE_DEPTH batches before waiting for the oldest, so that the GPU runs one
            # batch while this thread prepares the next and scatters the last.
            batch = self.batcher.next_batch(timeout=POLL if inflight else IDLE_POLL)
            now = time.monotonic()
            if batch is not None:
                if not inflight:
                    settled = now
                backend = self.backends[batch.model]
                try:
                    run = backend.launch_rows(batch.seqs, batch.token_ids)
                except BaseException as exc:  # noqa: BLE001 - reported per row
                    run = exc
                inflight.append((batch, backend, run))
                if len(inflight) < PIPELINE_DEPTH:
                    continue
            elif not inflight:
                if now - last_release > EMPTY_CACHE_INTERVAL:
                    backends.release_cache(self.device)
                    last_release = now
                continue
            elif not _ready(inflight[0][2]):
                continue  # the device is still busy: keep looking for work to queue behind it
            batch, backend, run = inflight.popleft()
            try:
                if isinstance(run, BaseException):
                    raise run
                matrix, errors = backend.collect(run)
            except BaseException as exc:  # noqa: BLE001
                matrix, errors = _rows_alone(backend, batch, exc)
            done = time.monotonic()
            elapsed, settled = done - settled, done  # busy time since the last batch finished
            for job, row in batch.parts:
                job.compute_s += elapsed * job.tokens[row] / max(batch.tokens, 1)
            finished = self.batcher.complete(batch, matrix, errors)
            if not inflight and done - last_release > EMPTY_CACHE_INTERVAL:
                backends.release_cache(self.device)
                last_release = time.monotonic()
            if finished:
                self.on_finished(finished)


def _ready(run):
    return isinstance(run, BaseException) or run.ready()


def _one_line(exc):
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:500]


def _rows_alone(backend, batch, exc):
    """A batch failed as a whole: embed its rows one at a time, so that a row fails only if it fails alone
    and no request loses its vectors to a batch mate. Returns (matrix, {row: one-line error})."""
    if len(batch) == 1 or backend.whole_requests:  # a whole request fails as one: its rows alone differ
        return None, dict.fromkeys(range(len(batch)), _one_line(exc))
    import numpy as np

    token_ids = batch.token_ids
    matrix, errors = np.zeros((len(batch), backend.dim), dtype=np.float32), {}
    for row, seq in enumerate(batch.seqs):
        try:
            vectors, row_errors = backend.embed_rows([seq], None if token_ids is None else [token_ids[row]])
        except Exception as row_exc:  # noqa: BLE001
            vectors, row_errors = None, {0: _one_line(row_exc)}
        if row_errors:
            errors[row] = row_errors[0]
        else:
            matrix[row] = vectors[0]
    return matrix, errors
