"""Model backends of the sidecar: load a model once, count its tokens, embed batches safely on a device.

One subclass per model (esm2.py, dnabert_s.py) names its loader; everything device-related lives here:
the numeric mode (`exact`: the fp32 path of virnucflow.models, bit-identical to the in-process `virnucflow
embed`: DNABERT-S one sequence per forward, ESM-2 in the original's batches of each request, which is
computed whole, without deduplication and without splitting; `fast`: the packed fp16 path of
virnucflow.models.*_fast, built on the same loaded weights converted once), deduplication of identical sequences through sidecar.cache,
the allocator setting that must precede `import torch`, the per-process memory fraction, periodic cache
release, memory figures, and splitting a batch in halves on CUDA out-of-memory. torch is imported
lazily so that importing this package costs nothing. No backend knows about sockets.
"""

import os
import time

from .interface import ExactModel, PackedModel

ALLOC_CONF = "expandable_segments:True"
MODES = ("exact", "fast")
# models whose requests are computed whole and alone in a mode: exact ESM-2 forms the original's batches of
# a request itself (virnucflow.models.esm2), so its vectors depend on the request, not on other requests
WHOLE_REQUESTS = {"exact": ("esm2",)}


def resolve_device(device):
    """'auto' is the current CUDA device when there is one, else the CPU; other names stay as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_name(device):
    """The GPU's name (None on the CPU), for the status report and the results' provenance."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


class SequenceFailed(Exception):
    """One sequence could not be embedded (e.g. out of memory on its own)."""


def prepare_torch_environment():
    """Call before torch is imported: a long-lived process wants an allocator that can give memory back."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
    return os.environ["PYTORCH_CUDA_ALLOC_CONF"]


def use_compile_cache(directory, fingerprints):
    """torch.compile's caches (inductor's graphs and kernels, Triton's binaries) under `directory`, in a
    subdirectory of these model fingerprints: kept across runs and across the machines that share it, and a
    changed model (or revision) starts a cache of its own. Compiled kernels are code that this process
    runs, so the directory must be this user's and not writable by others (made 0700 when absent). Returns the
    subdirectory. Call before the first torch.compile."""
    import hashlib
    import json
    from pathlib import Path

    from sidecar import safe_files

    root = Path(directory).expanduser()
    key = hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:16]
    path = root / key
    for level in (root, path):
        safe_files.make_dir(level)
        os.close(safe_files.open_dir(level, "compile cache directory", forbidden=safe_files.NOT_WRITABLE))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    return path


def start_compile_warm_up(device):
    """torch.compile's first use paid in a background thread while the weights load (virnucflow.models.compiler).
    The modules that loading imports are imported here first, so that the two threads never import at once a
    module that the other one needs."""
    import esm  # noqa: F401
    import safetensors.torch  # noqa: F401

    from virnucflow.models import compiler, dnabert_s, esm2_fast, mosaicbert_fast  # noqa: F401

    compiler.start(device)


def configure_device(device, memory_fraction=None, threads=None):
    """Validate the device string and apply the memory fraction (CUDA) or thread count (CPU); returns the
    canonical device name."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} visible GPU(s)")
    torch.cuda.set_device(index)
    if memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(float(memory_fraction), index)
    return f"cuda:{index}"


def release_cache(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def cuda_memory(device):
    """Allocator figures in bytes for a CUDA device, or None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device),
            "max_allocated": torch.cuda.max_memory_allocated(device)}


def _is_cuda_oom(exc):
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


class Backend:
    """A model held resident: `load()` once, then `count_tokens` and `embed_rows` many times."""

    key = None  # protocol model name

    def __init__(self, source, device="cpu", revision=None, mode="exact", cache_bytes=0, cache_entries=None,
                 max_batch_tokens=65536, trusted=(), dnabert_precision="fp16"):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (use {' or '.join(MODES)})")
        self.source = source
        self.device = device
        self.revision = revision
        self.mode = mode
        self.max_batch_tokens = max_batch_tokens
        self.dnabert_precision = dnabert_precision  # fast DNABERT-S's numerics (models.mosaicbert_fast)
        self.trusted = tuple(trusted)  # sha256s of model files that may be unpickled in full
        # a request computed as one unit: no row comes from the cache, no batch is cut in halves
        self.whole_requests = self.key in WHOLE_REQUESTS.get(mode, ())
        from ..cache import EmbeddingCache

        self.cache = EmbeddingCache(0 if self.whole_requests else cache_bytes, cache_entries)
        self._inflight = {}  # content key -> the launched, not yet collected batch that embeds it
        self.model = None  # an ExactModel, or a PackedModel (interface.py)
        self.packed = False
        self.loads = 0
        self.load_seconds = None

    def _load(self):
        raise NotImplementedError

    def load(self):
        start = time.monotonic()
        model = self._load()
        if not isinstance(model, ExactModel):
            raise TypeError(f"{type(model).__name__} is not a model that a backend can serve (see interface.py)")
        self.model = model
        self.packed = isinstance(model, PackedModel)
        self.loads += 1
        self.load_seconds = time.monotonic() - start
        return self

    @property
    def dim(self):
        return self.model.dim

    @property
    def name(self):
        return self.model.name

    def count_tokens(self, seq):
        return int(self.model.count_tokens(seq))

    def tokenize_many(self, seqs):
        """(token counts, token-id arrays or None): fast models tokenize once, here, for `launch_rows`
        (one batched call of the Rust tokenizer for DNABERT-S, GIL released); exact models only count."""
        if not self.packed:
            return [self.count_tokens(s) for s in seqs], None
        arrays = self.model.tokenize(seqs)
        return [len(a) for a in arrays], arrays

    def embed_batch(self, seqs):
        """[len(seqs), dim] float32; on CUDA out-of-memory, retry in halves down to one sequence."""
        try:
            return self.model.embed(seqs)
        except Exception as exc:
            if not _is_cuda_oom(exc):
                raise
            release_cache(self.device)
            if self.whole_requests:
                raise SequenceFailed(f"CUDA out of memory on a request of {len(seqs)} sequences, which exact "
                                     "mode computes in the original's batches") from None
            if len(seqs) == 1:
                raise SequenceFailed(f"CUDA out of memory on one sequence of {len(seqs[0])} characters") from None
        half = len(seqs) // 2
        import numpy as np

        return np.concatenate([self.embed_batch(seqs[:half]), self.embed_batch(seqs[half:])])

    def embed_rows(self, seqs, tokens=None):
        """Embed a batch now: `collect(launch_rows(...))`."""
        return self.collect(self.launch_rows(seqs, tokens))

    def launch_rows(self, seqs, tokens=None):
        """Start embedding a batch, each distinct uncached sequence once; `collect` gives the result.

        A fast model only queues its GPU work here and returns at once, so the caller can launch the next
        batch before it waits for this one; other models compute here. `tokens`: the sequences' token-id
        arrays from `tokenize_many`, if the caller kept them. Rows whose sequence is in the cache, repeats one
        earlier in the batch, or is embedded by a batch launched and not yet collected cost no model work.
        """
        import numpy as np

        from ..cache import content_key

        run = _Launch(seqs, tokens)
        if self.cache.enabled:
            run.keys = [content_key(self.key, s) for s in seqs]
            run.out = np.zeros((len(seqs), self.dim), dtype=np.float32)
            run.todo = {}  # key -> rows needing it
            for row, key in enumerate(run.keys):
                if key in run.todo or key in self._inflight:
                    self.cache.hits += 1  # a duplicate within the batch, or of a batch still in flight
                    if key in run.todo:
                        run.todo[key].append(row)
                    else:
                        run.borrowed[row] = key
                    continue
                vector = self.cache.get(key)
                if vector is None:
                    run.todo[key] = [row]
                else:
                    run.out[row] = vector
            run.firsts = [rows[0] for rows in run.todo.values()]
            self._inflight.update(dict.fromkeys(run.todo, run))
        else:
            run.firsts = list(range(len(seqs)))
        try:
            self._start(run)
        except BaseException:
            self._forget(run)
            raise
        return run

    def _start(self, run):
        if not run.firsts:
            return
        sub_seqs = [run.seqs[r] for r in run.firsts]
        if self.packed:
            try:
                if run.tokens is not None:
                    arrays = [run.tokens[r] for r in run.firsts]
                else:
                    arrays = self.model.tokenize(sub_seqs)
                run.pending = self.model.launch(arrays)
                return
            except Exception as exc:  # out of memory while queueing, or a bad sequence: the careful path
                if _is_cuda_oom(exc):
                    release_cache(self.device)
        run.matrix, run.errors = self._embed_rows_uncached(sub_seqs)

    def _forget(self, run):
        """This batch no longer embeds its keys for later ones (collected, or failed to start)."""
        for key in run.todo or ():
            if self._inflight.get(key) is run:
                del self._inflight[key]

    def collect(self, run):
        """Wait for a launched batch: (matrix, {row: one-line error}); failed rows of the matrix are undefined.
        Batches are collected in launch order: rows borrowed from an earlier batch find its vectors cached."""
        try:
            if run.pending is not None:
                try:
                    run.matrix, run.errors = run.pending.result(), {}
                except Exception:  # an error the GPU reported late: embed the rows again, one failure per row
                    run.matrix, run.errors = self._embed_rows_uncached([run.seqs[r] for r in run.firsts])
                run.pending = None
            if run.todo is None:
                return run.matrix, run.errors
            errors = {}
            for i, (key, rows) in enumerate(run.todo.items()):
                if i in run.errors:
                    errors.update((r, run.errors[i]) for r in rows)
                    continue
                run.out[rows] = run.matrix[i]
                self.cache.put(key, run.matrix[i])
        finally:
            self._forget(run)
        missing = []  # borrowed rows whose vector is not cached (its batch failed, or it was evicted at once)
        for row, key in run.borrowed.items():
            vector = self.cache.peek(key)
            if vector is None:
                missing.append(row)
            else:
                run.out[row] = vector
        if missing:
            matrix, sub_errors = self._embed_rows_uncached([run.seqs[r] for r in missing])
            for i, row in enumerate(missing):
                if i in sub_errors:
                    errors[row] = sub_errors[i]
                else:
                    run.out[row] = matrix[i]
        return run.out, errors

    def _embed_rows_uncached(self, seqs):
        try:
            return self.embed_batch(seqs), {}
        except Exception as exc:
            if len(seqs) == 1 or self.whole_requests:
                return None, dict.fromkeys(range(len(seqs)), _one_line(exc))
        import numpy as np

        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        errors = {}
        for row, seq in enumerate(seqs):
            try:
                out[row] = self.embed_batch([seq])[0]
            except Exception as exc:
                errors[row] = _one_line(exc)
        return out, errors


class _Launch:
    """One batch between `launch_rows` and `collect`."""

    def __init__(self, seqs, tokens):
        self.seqs, self.tokens = seqs, tokens
        self.keys = self.out = self.todo = None  # deduplication: content keys, result, key -> rows
        self.firsts = []  # rows that go to the model (first occurrence of each uncached sequence)
        self.borrowed = {}  # row -> key of a sequence that a batch launched earlier embeds
        self.pending = None  # the model's queued result
        self.matrix, self.errors = None, {}  # rows of `firsts` embedded, {index in firsts: error}

    def ready(self):
        """True when `collect` will not wait for the device."""
        return self.pending is None or self.pending.done()


def _one_line(exc):
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:500]


def make_backend(key, source, device="cpu", revision=None, **options):
    if key == "esm2":
        from .esm2 import Esm2Backend as cls
    elif key == "dnabert_s":
        from .dnabert_s import DnabertSBackend as cls
    else:
        raise ValueError(f"unknown model {key!r}")
    return cls(source, device=device, revision=revision, **options)
