"""What a backend needs of a model, written down: the exact models and the packed fast ones.

`ExactModel` is virnucflow.models.esm2.Esm2 (fp32, the original's batches of the sequences given) and
.dnabert_s.DnabertS (fp32, one sequence per forward);
`PackedModel` is FastEsm2 and FastDnabertS, which also tokenize once at admission and queue a packed
batch on the device without waiting for it (`launch` returns a `Pending`). A backend tells them apart
by this interface, not by the class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


class Pending(Protocol):
    """A batch queued on the device."""

    def done(self) -> bool: ...

    def result(self) -> np.ndarray: ...


@runtime_checkable
class ExactModel(Protocol):
    name: str
    dim: int

    def count_tokens(self, seq: str) -> int: ...

    def embed(self, seqs: list[str]) -> np.ndarray:
        """float32 [len(seqs), dim]."""


@runtime_checkable
class PackedModel(ExactModel, Protocol):
    def tokenize(self, seqs: list[str]) -> list[np.ndarray]:
        """Token-id arrays, one per sequence, computed once and passed to `launch`."""

    def launch(self, token_arrays: list[np.ndarray]) -> Pending: ...
