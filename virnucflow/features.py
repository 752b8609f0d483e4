"""Merged classifier features in the original layout: `{'ids': [str], 'data': FloatTensor[N, 768 + 2560]}`.

Per ID, the DNABERT-S vector (768) comes first, then the ESM-2 vector (2560), as in the original
`units.merge_data`, which saves one `output_<k>_merged.pt` per split file.

Deviation from the original, on purpose: `merge_data` looks each DNABERT-S id up in the ESM-2
results, skips (with a printed warning) ids missing from either side, yet saves ALL DNABERT-S ids
beside the shorter data tensor, so ids and rows silently misalign. Here the two inputs must hold
the same ids in the same order, and a merged file whose ids and rows differ in number is refused.

Merging imports no torch: the merged file is written by virnucflow.torch_format, with the records and
bytes that torch.save writes. Only reading one (load_merged, in the classify step) imports torch.
"""

import numpy as np

from virnucflow import safe_load
from virnucflow.embedding_files import load_embeddings
from virnucflow.errors import InputError
from virnucflow.torch_format import save_ids_and_matrix

DNABERT_DIM = 768
ESM_DIM = 2560
MERGED_DIM = DNABERT_DIM + ESM_DIM


def _matrix(name, ids, array, dim):
    data = np.asarray(array, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(ids):
        raise InputError(f"{name} embeddings: expected {len(ids)} rows of a 2-D array, got shape {data.shape}")
    if dim is not None and data.shape[1] != dim:
        raise InputError(f"{name} embeddings: expected {dim} values per row, got {data.shape[1]}")
    return data


def merge_embeddings(dna, protein, *, dna_dim=DNABERT_DIM, protein_dim=ESM_DIM):
    """Concatenate (ids, [N, dna_dim]) and (ids, [N, protein_dim]) row by row: DNABERT-S first, then ESM-2.
    Returns {'ids': list, 'data': float32 ndarray [N, dna_dim + protein_dim]}."""
    dna_ids, dna_array = list(dna[0]), dna[1]
    protein_ids, protein_array = list(protein[0]), protein[1]
    for row, (a, b) in enumerate(zip(dna_ids, protein_ids)):
        if a != b:
            raise InputError(f"DNA and protein embeddings disagree at row {row}: {a!r} vs {b!r}; both must list the same ids in the same order")
    if len(dna_ids) != len(protein_ids):
        row = min(len(dna_ids), len(protein_ids))
        extra = (dna_ids if len(dna_ids) > row else protein_ids)[row]
        raise InputError(f"DNA and protein embeddings disagree at row {row}: {extra!r} is present on one side only ({len(dna_ids)} vs {len(protein_ids)} ids)")
    data = np.concatenate([_matrix("DNA", dna_ids, dna_array, dna_dim), _matrix("protein", protein_ids, protein_array, protein_dim)], axis=1)
    return {"ids": dna_ids, "data": data}


def save_merged(path, merged):
    """Write {'ids', 'data'} atomically in the original layout, as torch.save writes it (data as float32).
    Only the rows are written, not a larger array that `data` is a view of."""
    ids, data = list(merged["ids"]), np.asarray(merged["data"], dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(ids) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"merged features for {path}: need one str id per row of a 2-D array, got {len(ids)} ids and shape {tuple(data.shape)}")
    save_ids_and_matrix(path, ids, data)


def load_merged(path):
    """Read a merged feature file (ours or the original's) without unpickling anything but tensors and lists.
    Returns {'ids': list, 'data': float32 torch tensor}."""
    import torch

    try:
        obj = safe_load.load(path, needs="a merged feature file holds only ids and a tensor",
                             fix="rerun the merge step")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: merged feature file not found; check the path or rerun the merge step") from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable merged feature file ({reason}); rerun the merge step") from None
    if not isinstance(obj, dict) or "ids" not in obj or "data" not in obj:
        raise InputError(f"{path}: not a merged feature file (expected a dict with 'ids' and 'data'); rerun the merge step")
    ids, data = obj["ids"], obj["data"]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path}: 'ids' must be a list of strings; rerun the merge step")
    if not isinstance(data, torch.Tensor) or data.ndim != 2 or not data.is_floating_point():
        raise InputError(f"{path}: 'data' must be a 2-D float tensor; rerun the merge step")
    if data.shape[0] != len(ids):
        raise InputError(f"{path}: {len(ids)} ids but {data.shape[0]} data rows (ids and features misaligned); rerun the merge step")
    return {"ids": list(ids), "data": data.to(torch.float32)}


def merge_files(dna_path, protein_path, out_path, *, dna_dim=DNABERT_DIM, protein_dim=ESM_DIM):
    """Merge two embedding .npz files (see embedding_files) into one original-layout .pt file."""
    try:
        merged = merge_embeddings(load_embeddings(dna_path), load_embeddings(protein_path), dna_dim=dna_dim, protein_dim=protein_dim)
    except InputError as exc:
        if str(dna_path) in str(exc) or str(protein_path) in str(exc):
            raise
        raise InputError(f"{dna_path} + {protein_path}: {exc}") from None
    save_merged(out_path, merged)
    return merged
