"""VirNucPro's own embedding loops, transcribed, as the reference that exact mode must equal bit for bit.

`original_esm2` is `units.extract_esm` on one file: fair-esm's own loader (a full unpickle and
`load_state_dict`, as fair-esm does), `FastaBatchedDataset.from_file`, `get_batch_indices(2048,
extra_toks_per_seq=1)`, a DataLoader with the batch converter (no truncation length), `repr_layers=[last]`,
the mean over residues 1..min(1024, len), results keyed by label (the whole header line). fp32, TF32 off.

`original_dnabert_s` is `units.extract_DNABERT_S`'s loop: per sequence, tokenize ([CLS] ... [SEP], no
truncation), one forward without an attention mask, mean of the last hidden state over all tokens. The
original runs the hub's remote MosaicBERT code through transformers, which is not here (offline, and it
needs triton); this loop runs virnucflow's MosaicBERT module, so it measures the original's per-sequence
loop, and virnucflow's DNABERT-S numerics are held to the hub code elsewhere (test_models_mosaicbert).
"""

import time
import warnings
from pathlib import Path

import numpy as np
import torch

TOKS_PER_BATCH, EXTRA_TOKS_PER_SEQ, TRUNCATION_SEQ_LENGTH = 2048, 1, 1024


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def load_original_esm2(checkpoint, device="cpu"):
    """(model, alphabet) by fair-esm's own loader, in fp32 on `device`."""
    import esm

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Regression weights not found": the contact head is unused
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(Path(checkpoint).stem, data, None)
    return model.eval().to(device), alphabet


def original_esm2(model, alphabet, fasta, device="cpu"):
    """({label: float32 vector}, seconds of the loop) for one protein FASTA, as extract_esm computes them."""
    import esm

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dataset = esm.FastaBatchedDataset.from_file(str(fasta))
    batches = dataset.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=EXTRA_TOKS_PER_SEQ)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=alphabet.get_batch_converter(), batch_sampler=batches)
    layer = model.num_layers
    out = {}
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for labels, strs, toks in loader:
            result = model(toks.to(device=device, non_blocking=True), repr_layers=[layer], return_contacts=False)
            for i, label in enumerate(labels):
                end = min(TRUNCATION_SEQ_LENGTH, len(strs[i])) + 1
                out[label] = result["representations"][layer][i, 1:end].mean(0).clone().cpu().numpy()
    _sync(device)
    return out, time.perf_counter() - start


def original_dnabert_s(dnabert, seqs, device="cpu"):
    """(float32 [N, dim], seconds of the loop): the original's one-sequence-per-forward DNABERT-S loop on a
    loaded virnucflow DnabertS (its MosaicBERT module and tokenizer)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    out = np.empty((len(seqs), dnabert.dim), dtype=np.float32)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            ids = torch.tensor([dnabert.tokenizer.encode(seq).ids], dtype=torch.long).to(device)
            hidden = dnabert.model(ids)
            out[i] = torch.mean(hidden[0], dim=0).cpu().numpy()
    _sync(device)
    return out, time.perf_counter() - start
