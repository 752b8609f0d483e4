"""The original's MLP classifier, its model files, and its two prediction tables.

Source read: `prediction.py` and `train.py` of Li-Jing-1997/VirNucPro (commit 0b7e6f1) and the
unmodified copy of `prediction.py` in broadinstitute/virnucpro-broad (commit e18e606). The
upstream commit stored there stops after `prediction_results.txt`; the Broad copy also writes
`prediction_results_highestscore.csv` (with pandas). Both are reproduced here.

Model. `MLPClassifier` below is the original class verbatim (same attribute names, so state dict
keys match): hidden_layer = Linear(in, 512), bn1 = BatchNorm1d(512), F.relu, dropout =
Dropout(0.5), output_layer = Linear(512, 2); used in eval mode, then softmax over dim 1. The
shipped `.pth` files are whole modules saved by `torch.save(model)` from `train.py`, so the
pickle names `__main__.MLPClassifier`; the original unpickles them with plain `torch.load`
(upstream, which fails on torch >= 2.6) or `torch.load(..., weights_only=False)` (Broad copy,
which runs whatever the file says). Here they go through torch's weights_only unpickler with
exactly the globals this architecture needs, `__main__.MLPClassifier` mapped to our class, and
only the state dict is kept. `map_location='cpu'` because train.py saved from the GPU.

`prediction_results.txt` (per frame, input order):
    f.write("Sequence_ID\\tPrediction\\tscore1\\tscore2\\n")
    prob_str = '\\t'.join(map(str, probability))
    f.write(f"{seqid}\\t{prediction}\\t{prob_str}\\n")
`probability` is a row of `probabilities.cpu().numpy()`, so each score is `str(numpy.float32)`:
the shortest float32 round-trip text, numpy style ('0.99999994', '1.0', '3.4e-05', '1e-04').
`prediction` comes from `torch.max(probabilities.data, 1)` with {1: 'virus', 0: 'others'}; on a
tie torch returns the first index, so a row with score1 == score2 is 'others'.

`prediction_results_highestscore.csv` (per chunk):
    df = pd.read_csv(output_file, sep="\\t")
    df["Modified_ID"] = df["Sequence_ID"].str[:-2]
    df = df.groupby("Modified_ID", group_keys=False).apply(determine_virus).reset_index()
    df.to_csv(output_folder + "prediction_results_highestscore.csv", sep="\\t", index=False)
with determine_virus returning `pd.Series({"Is_Virus": max_score2 >= max_score1})` from the
per-column maxima. Hence: TAB-separated despite the name; header `Modified_ID\\tIs_Virus`; the
two maxima may come from different frames; ties count as virus (unlike the txt label); rows
sorted by Modified_ID (groupby's default sort: code-point order); `True`/`False`; fields quoted
csv-style only if they contain a tab, quote or newline. Comparing the float32 values directly
equals comparing the re-read decimal texts (shortest round-trip text preserves order). pandas'
max skips NaN, so a chunk whose scores are all NaN is False.

The tables are written by `virnucflow/predictions.py` (also per part, and put together at the end).

Not reproduced: the original crashes on empty input (we write headers only); its row order
follows `os.listdir` of the split files (we take the order given); pandas' read_csv would
mis-parse an id that begins with a double quote. Lines end in '\\n' (pandas writes os.linesep).
"""

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucflow import safe_load
from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError
from virnucflow.features import MERGED_DIM, load_merged
from virnucflow.predictions import (
    BATCH_SIZE, HIGHEST_NAME, RESULTS_HEADER, RESULTS_NAME, ChunkMaxima, parts_per_job, result_row,
    write_part_rows,
)

HIDDEN_DIM = 512
NUM_CLASS = 2

class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()

        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)

        self.output_layer = nn.Linear(hidden_dim, num_class)

        self.dropout = nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self):
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


class LoadedClassifier(NamedTuple):
    state_dict: dict
    input_dim: int


_MODULE_GLOBALS = [
    (MLPClassifier, "__main__.MLPClassifier"),
    nn.Linear,
    nn.BatchNorm1d,
    nn.ReLU,
    nn.Dropout,
]
_CHILDREN = {"hidden_layer": nn.Linear, "bn1": nn.BatchNorm1d, "output_layer": nn.Linear, "dropout": nn.Dropout}


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickle(path):
    try:
        return safe_load.load(
            path, allowed=_MODULE_GLOBALS,
            needs="a VirNucPro classifier holds only tensors and the MLPClassifier's torch.nn modules",
            fix="if you trust this file, re-save its state_dict() and pass that")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: classifier file not found; pass the 300_model.pth or 500_model.pth you downloaded") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a classifier file; pass the .pth file itself") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for bad files
        raise InputError(f"{path}: not a readable classifier file ({_first_line(exc)}); pass an original .pth or a state dict") from None


def _is_original_module(obj):
    try:
        children = dict(obj.named_children())
    except Exception:  # a crafted pickle can leave the module without its internals
        return False
    return (
        type(obj) is MLPClassifier
        and children.keys() == _CHILDREN.keys()
        and all(type(children[name]) is cls for name, cls in _CHILDREN.items())
        and children["bn1"].eps == 1e-5
    )


def _state_of(path, obj):
    if isinstance(obj, nn.Module):
        if not _is_original_module(obj):
            raise InputError(
                f"{path}: the pickled module is not the original MLPClassifier "
                "(hidden_layer, bn1 with eps 1e-05, output_layer, dropout); pass a VirNucPro .pth"
            )
        return obj.state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    raise InputError(f"{path}: holds a {type(obj).__name__}, neither a pickled MLPClassifier nor its state dict; pass a VirNucPro .pth")


def load_classifier(path):
    """Load an original whole-module .pth or a plain state dict; returns LoadedClassifier(state_dict, input_dim)."""
    state = _state_of(path, _unpickle(path))
    weight = state.get("hidden_layer.weight")
    out_weight = state.get("output_layer.weight")
    if weight is None or weight.ndim != 2 or out_weight is None or out_weight.ndim != 2 or out_weight.shape[0] != NUM_CLASS:
        raise InputError(f"{path}: state dict lacks the MLPClassifier layout (hidden_layer/bn1/output_layer with 2 classes); pass a VirNucPro .pth")
    hidden_dim, input_dim = weight.shape
    model = MLPClassifier(input_dim, hidden_dim, NUM_CLASS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"{path}: state dict does not fit MLPClassifier({input_dim}, {hidden_dim}, 2) ({detail[:300]}); pass a VirNucPro .pth") from None
    return LoadedClassifier({k: v.detach().clone() for k, v in model.state_dict().items()}, int(input_dim))


def _model(state):
    state_dict = state.state_dict if isinstance(state, LoadedClassifier) else state
    hidden_dim, input_dim = state_dict["hidden_layer.weight"].shape
    model = MLPClassifier(input_dim, hidden_dim, NUM_CLASS)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def predict(state, features):
    """Softmax probabilities [N, 2] (P(others), P(virus)) of the eval-mode classifier, float32."""
    model = _model(state)
    features = torch.as_tensor(features, dtype=torch.float32)
    input_dim = model.hidden_layer.in_features
    if features.ndim != 2 or features.shape[1] != input_dim:
        raise InputError(f"features have shape {tuple(features.shape)}, the classifier expects [N, {input_dim}]")
    with torch.inference_mode():
        parts = [F.softmax(model(batch), dim=1) for batch in features.split(BATCH_SIZE)]
    return torch.cat(parts) if parts else torch.empty(0, NUM_CLASS)


def _scores(probs, n_ids):
    scores = np.asarray(torch.as_tensor(probs, dtype=torch.float32).cpu(), dtype=np.float32).reshape(-1, NUM_CLASS)
    if scores.shape[0] != n_ids:
        raise ValueError(f"{n_ids} ids but {scores.shape[0]} probability rows")
    return scores


def write_predictions(ids, probs, out_dir):
    """Write out_dir/prediction_results.txt and out_dir/prediction_results_highestscore.csv as the original does."""
    ids = list(ids)
    scores = _scores(probs, len(ids))
    maxima = ChunkMaxima()
    with atomic_path(Path(out_dir) / RESULTS_NAME) as tmp, open(tmp, "w", newline="") as out:
        out.write(RESULTS_HEADER)
        for seqid, (p0, p1) in zip(ids, scores):
            out.write(result_row(seqid, p0, p1))
            maxima.add(seqid, p0, p1)
    maxima.write(Path(out_dir) / HIGHEST_NAME)


def _read_merged(model_path, classifier, path):
    merged = load_merged(path)
    if merged["data"].shape[1] != classifier.input_dim:
        raise InputError(
            f"{path}: features have {merged['data'].shape[1]} values per row but {model_path} expects {classifier.input_dim}; "
            "use the classifier that matches these features"
        )
    return merged


def classify_files(model_path, merged_paths, out_dir):
    """Classify merged feature files (rows concatenated in the given order) and write both tables; returns the row count."""
    classifier = load_classifier(model_path)
    merged_paths = list(merged_paths)
    ids, blocks = [], []
    for number, path in enumerate(merged_paths, start=1):
        merged = _read_merged(model_path, classifier, path)
        logging.getLogger("virnucflow.progress").info(
            "classify: read part %d of %d (%d frames so far)", number, len(merged_paths), len(ids) + len(merged["ids"]))
        ids.extend(merged["ids"])
        blocks.append(merged["data"])
    data = torch.cat(blocks) if blocks else torch.empty(0, classifier.input_dim)
    write_predictions(ids, predict(classifier, data), out_dir)
    return len(ids)


def classify_part(model_path, window_paths, first_part, part, records_per_file, output):
    """Score the scoring job's parts (part `part` and, for parts smaller than a batch, the next ones:
    predictions.parts_per_job) in exactly the batches the one-shot run gives their rows; write their rows.

    `window_paths` are the merged files of parts first_part, first_part+1, ... in order, covering every
    row that shares a batch with those rows (predictions.batch_window). Returns the rows written.
    """
    classifier = load_classifier(model_path)
    ids, blocks = [], []
    for number, path in enumerate(window_paths, start=first_part):
        merged = _read_merged(model_path, classifier, path)
        if number != first_part + len(window_paths) - 1 and len(merged["ids"]) != records_per_file:
            raise InputError(f"{path}: holds {len(merged['ids'])} rows, not {records_per_file}; rerun the split of this sample")
        ids.extend(merged["ids"])
        blocks.append(merged["data"])
    origin = (first_part - 1) * records_per_file  # the window's first row in the whole sample
    own_start = (part - first_part) * records_per_file
    own = slice(own_start, min(len(ids), own_start + parts_per_job(records_per_file) * records_per_file))
    start = (origin + own.start) // BATCH_SIZE * BATCH_SIZE - origin
    stop = min(len(ids), -(-(origin + own.stop) // BATCH_SIZE) * BATCH_SIZE - origin)
    data = torch.cat(blocks) if blocks else torch.empty(0, classifier.input_dim)
    probs = predict(classifier, data[start:stop])[own.start - start:own.stop - start]
    write_part_rows(ids[own], _scores(probs, own.stop - own.start), output)
    return own.stop - own.start


@contextmanager
def _recorded_as_main(cls):
    """Make pickle record `cls` as __main__.<name>, as it does for a class defined in a script."""
    main = sys.modules["__main__"]
    missing = object()
    saved_module, saved_attr = cls.__module__, getattr(main, cls.__qualname__, missing)
    cls.__module__ = "__main__"
    setattr(main, cls.__qualname__, cls)
    try:
        yield
    finally:
        cls.__module__ = saved_module
        if saved_attr is missing:
            delattr(main, cls.__qualname__)
        else:
            setattr(main, cls.__qualname__, saved_attr)


def write_random_classifier(path, input_dim=MERGED_DIM, seed=0, hidden_dim=HIDDEN_DIM):
    """A random MLPClassifier pickled like train.py's `torch.save(model, 'model.pth')`, for tests and benchmarks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(input_dim, hidden_dim, NUM_CLASS)
        with torch.no_grad():
            model.bn1.weight.uniform_(0.5, 1.5)
            model.bn1.bias.uniform_(-0.2, 0.2)
            model.train()
            for _ in range(4):
                model(torch.randn(64, input_dim) * 2.0 + 0.3)
    model.eval()
    with _recorded_as_main(MLPClassifier), atomic_path(path) as tmp:
        torch.save(model, tmp)
    return model
