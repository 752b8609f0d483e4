"""Model backends of the sidecar: load a model once, count its tokens, embed batches safely on a device.

One subclass per model (esm2.py, dnabert_s.py) names its loader; everything device-related lives here:
the allocator setting that must precede `import torch`, the per-process memory fraction, periodic cache
release, memory figures, and splitting a batch in halves on CUDA out-of-memory. torch is imported
lazily so that importing this package costs nothing. No backend knows about sockets.
"""

import os
import time

ALLOC_CONF = "expandable_segments:True"


class SequenceFailed(Exception):
    """One sequence could not be embedded (e.g. out of memory on its own)."""


def prepare_torch_environment():
    """Call before torch is imported: a long-lived process wants an allocator that can give memory back."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
    return os.environ["PYTORCH_CUDA_ALLOC_CONF"]


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

    def __init__(self, source, device="cpu", revision=None):
        self.source = source
        self.device = device
        self.revision = revision
        self.model = None
        self.loads = 0
        self.load_seconds = None

    def _load(self):
        raise NotImplementedError

    def load(self):
        start = time.monotonic()
        self.model = self._load()
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

    def embed_batch(self, seqs):
        """[len(seqs), dim] float32; on CUDA out-of-memory, retry in halves down to one sequence."""
        try:
            return self.model.embed(seqs)
        except Exception as exc:
            if not _is_cuda_oom(exc):
                raise
            release_cache(self.device)
            if len(seqs) == 1:
                raise SequenceFailed(f"CUDA out of memory on one sequence of {len(seqs[0])} characters") from None
        half = len(seqs) // 2
        import numpy as np

        return np.concatenate([self.embed_batch(seqs[:half]), self.embed_batch(seqs[half:])])

    def embed_rows(self, seqs):
        """Embed a batch; if it fails, embed one by one so a failure is pinned to its own sequence.

        Returns (matrix, {row: one-line error}); failed rows of the matrix are undefined.
        """
        try:
            return self.embed_batch(seqs), {}
        except Exception as exc:
            if len(seqs) == 1:
                return None, {0: _one_line(exc)}
        import numpy as np

        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        errors = {}
        for row, seq in enumerate(seqs):
            try:
                out[row] = self.embed_batch([seq])[0]
            except Exception as exc:
                errors[row] = _one_line(exc)
        return out, errors


def _one_line(exc):
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:500]


def make_backend(key, source, device="cpu", revision=None):
    if key == "esm2":
        from .esm2 import Esm2Backend as cls
    elif key == "dnabert_s":
        from .dnabert_s import DnabertSBackend as cls
    else:
        raise ValueError(f"unknown model {key!r}")
    return cls(source, device=device, revision=revision)
