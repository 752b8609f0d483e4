"""The classifier step against the original's model format and prediction.py's two output tables."""

import hashlib
import math
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from virnucflow import classifier as C
from virnucflow.fingerprint import ORIGINAL_CLASSIFIER_BLOBS, git_blob_sha1, original_classifier_name
from virnucflow.errors import InputError
from virnucflow.features import save_merged

DIM = 48


def reference_outputs(seqids, probabilities):
    """prediction.py's output logic, transcribed (Broad copy of the original, commit e18e606).

    predict(): probabilities = F.softmax(outputs, dim=1); _, predicted = torch.max(probabilities.data, 1);
    label_map = {1: 'virus', 0: 'others'}; all_probabilities.extend(probabilities.cpu().numpy()).
    Then the txt is written, read back with pd.read_csv(sep='\\t'), Modified_ID = Sequence_ID.str[:-2],
    groupby(Modified_ID) (sorted) -> Is_Virus = group.score2.max() >= group.score1.max() (NaN skipped),
    to_csv(sep='\\t', index=False).
    """
    probabilities = torch.as_tensor(probabilities, dtype=torch.float32)
    _, predicted = torch.max(probabilities.data, 1)
    label_map = {1: "virus", 0: "others"}
    predictions = [label_map[pred.item()] for pred in predicted]
    rows = list(probabilities.cpu().numpy())

    txt = "Sequence_ID\tPrediction\tscore1\tscore2\n"
    for seqid, prediction, probability in zip(seqids, predictions, rows):
        prob_str = "\t".join(map(str, probability))
        txt += f"{seqid}\t{prediction}\t{prob_str}\n"

    groups = {}
    for line in txt.splitlines()[1:]:
        sequence_id, _, score1, score2 = line.split("\t")
        groups.setdefault(sequence_id[:-2], []).append((float(score1), float(score2)))

    def pandas_max(values):
        values = [v for v in values if not math.isnan(v)]
        return max(values) if values else math.nan

    csv_text = "Modified_ID\tIs_Virus\n"
    for modified_id in sorted(groups):
        max_score1 = pandas_max([s1 for s1, _ in groups[modified_id]])
        max_score2 = pandas_max([s2 for _, s2 in groups[modified_id]])
        csv_text += f"{to_csv_field(modified_id)}\t{max_score2 >= max_score1}\n"
    return txt, csv_text


def to_csv_field(text):
    """DataFrame.to_csv's default csv.QUOTE_MINIMAL with quotechar '"' and doublequote."""
    if any(c in text for c in '\t"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_outputs(out_dir):
    with open(out_dir / C.RESULTS_NAME, newline="") as a, open(out_dir / C.HIGHEST_NAME, newline="") as b:
        return a.read(), b.read()


def sequential_probs(state_dict, x):
    """The same network as a plain nn.Sequential, evaluated independently of MLPClassifier."""
    hidden, input_dim = state_dict["hidden_layer.weight"].shape
    seq = nn.Sequential(nn.Linear(input_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 2))
    rename = {"hidden_layer": "0", "bn1": "1", "output_layer": "4"}
    seq.load_state_dict({rename[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in state_dict.items()})
    with torch.no_grad():
        return torch.softmax(seq.eval()(x), dim=1)


def pickle_globals(path):
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pth"
    C.write_random_classifier(path, DIM, seed=3)
    return path


def assert_one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message


# --- model file format -------------------------------------------------------------------------


@pytest.mark.unit
def test_original_attribute_names_and_shapes():
    state = C.MLPClassifier(3328, 512, 2).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "hidden_layer.weight": (512, 3328),
        "hidden_layer.bias": (512,),
        "bn1.weight": (512,),
        "bn1.bias": (512,),
        "bn1.running_mean": (512,),
        "bn1.running_var": (512,),
        "bn1.num_batches_tracked": (),
        "output_layer.weight": (2, 512),
        "output_layer.bias": (2,),
    }


@pytest.mark.unit
def test_random_classifier_is_pickled_as_main_module(model_file):
    globals_ = pickle_globals(model_file)
    assert "__main__ MLPClassifier" in globals_
    assert not any("virnucflow" in g for g in globals_)
    assert C.MLPClassifier.__module__ == "virnucflow.classifier"
    assert getattr(sys.modules["__main__"], "MLPClassifier", None) is not C.MLPClassifier


@pytest.mark.process
def test_random_classifier_loads_as_a_script_would(model_file, tmp_path):
    # A script that defines MLPClassifier in __main__ (as prediction.py does) unpickles our file.
    script = tmp_path / "load.py"
    script.write_text(
        "import sys, torch\nfrom torch import nn\n"
        "class MLPClassifier(nn.Module):\n    pass\n"
        "m = torch.load(sys.argv[1], weights_only=False)\n"
        "print(type(m).__module__, type(m).__name__, sorted(m.state_dict()))\n"
    )
    out = subprocess.run([sys.executable, str(script), str(model_file)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("__main__ MLPClassifier ['bn1.bias'")


@pytest.mark.unit
def test_batchnorm_running_stats_are_non_trivial(model_file):
    state = C.load_classifier(model_file).state_dict
    assert state["bn1.running_mean"].abs().max() > 0.05
    assert (state["bn1.running_var"] - 1).abs().max() > 0.05


@pytest.mark.unit
def test_whole_module_and_plain_state_dict_score_identically(model_file, tmp_path):
    from_module = C.load_classifier(model_file)
    assert from_module.input_dim == DIM
    plain = tmp_path / "plain.pth"
    torch.save(from_module.state_dict, plain)
    from_state = C.load_classifier(plain)
    x = torch.randn(300, DIM)
    assert torch.equal(C.predict(from_module, x), C.predict(from_state, x))
    state_dict, input_dim = from_state
    assert input_dim == DIM and state_dict.keys() == from_module.state_dict.keys()


@pytest.mark.unit
def test_scores_match_a_direct_sequential_computation(model_file):
    loaded = C.load_classifier(model_file)
    x = torch.randn(700, DIM) * 2
    probs = C.predict(loaded, x)
    assert probs.shape == (700, 2) and probs.dtype == torch.float32
    assert torch.allclose(probs, sequential_probs(loaded.state_dict, x), atol=1e-6, rtol=0)
    assert torch.allclose(probs.sum(1), torch.ones(700), atol=1e-6)
    model = C.MLPClassifier(DIM, C.HIDDEN_DIM, 2)
    model.load_state_dict(loaded.state_dict)
    with torch.no_grad():
        train_mode = torch.softmax(model.train()(x), dim=1)
    assert (train_mode - probs).abs().max() > 1e-3  # eval mode matters


@pytest.mark.unit
def test_predict_rejects_wrong_width_and_handles_no_rows(model_file):
    loaded = C.load_classifier(model_file)
    assert C.predict(loaded, torch.empty(0, DIM)).shape == (0, 2)
    with pytest.raises(InputError):
        C.predict(loaded, torch.randn(3, DIM + 1))


@pytest.mark.unit
def test_gpu_saved_module_loads_on_cpu(tmp_path):
    # train.py saved from CUDA: storages are tagged 'cuda:0'. Fake that tag on a CPU-only torch.
    registry = torch.serialization._package_registry
    torch.serialization.register_package(-1000, lambda storage: "cuda:0", lambda obj, location: None)
    try:
        path = tmp_path / "gpu.pth"
        C.write_random_classifier(path, DIM)
    finally:
        registry[:] = [entry for entry in registry if entry[0] != -1000]
    assert C.load_classifier(path).input_dim == DIM


# --- refusals ----------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.unit
@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_disallowed_global_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    payload = {"hidden_layer.weight": _Exploit(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(InputError) as excinfo:
        C.load_classifier(path)
    assert_one_line_error(excinfo, path)
    assert "system" in str(excinfo.value)
    assert not marker.exists()


@pytest.mark.unit
def test_disallowed_global_inside_the_module_is_refused(tmp_path):
    marker = tmp_path / "executed"
    model = C.MLPClassifier(DIM, 8, 2)
    model.extra = _Exploit(marker)
    path = tmp_path / "evil_module.pth"
    with C._recorded_as_main(C.MLPClassifier):
        torch.save(model, path)
    with pytest.raises(InputError) as excinfo:
        C.load_classifier(path)
    assert_one_line_error(excinfo, path)
    assert not marker.exists()


def _bad_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a model\n")
    linear = tmp_path / "linear.pth"
    torch.save(nn.Linear(DIM, 2), linear)
    sequential = tmp_path / "sequential.pth"
    torch.save(nn.Sequential(nn.Linear(DIM, 512), nn.BatchNorm1d(512), nn.Linear(512, 2)).state_dict(), sequential)
    shapes = tmp_path / "shapes.pth"
    state = C.MLPClassifier(DIM, 512, 2).state_dict()
    state["bn1.weight"] = torch.ones(256)
    torch.save(state, shapes)
    three_class = tmp_path / "three.pth"
    torch.save(C.MLPClassifier(DIM, 16, 3).state_dict(), three_class)
    eps = tmp_path / "eps.pth"
    model = C.MLPClassifier(DIM, 16, 2)
    model.bn1.eps = 1e-3
    with C._recorded_as_main(C.MLPClassifier):
        torch.save(model, eps)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), tensor)
    npz = tmp_path / "arrays.pth"
    with open(npz, "wb") as handle:
        np.savez(handle, a=np.ones(3))
    return [tmp_path / "missing.pth", tmp_path, text, linear, sequential, shapes, three_class, eps, tensor, npz]


@pytest.mark.unit
def test_bad_model_files_give_one_line_input_errors(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(InputError) as excinfo:
            C.load_classifier(path)
        assert_one_line_error(excinfo, path)


@pytest.mark.unit
def test_restricted_globals_do_not_leak(model_file):
    C.load_classifier(model_file)
    # the classifier's class is allowed only while load_classifier runs: a plain weights_only load refuses it
    with pytest.raises(pickle.UnpicklingError, match="MLPClassifier"):
        torch.load(model_file, weights_only=True)


# --- blob ids ----------------------------------------------------------------------------------


@pytest.mark.process
def test_git_blob_sha1(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert git_blob_sha1(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    blob = tmp_path / "blob"
    content = os.urandom(3_000_000)
    blob.write_bytes(content)
    assert git_blob_sha1(blob) == hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", str(blob)], capture_output=True, text=True, check=True).stdout.strip()
        assert git_blob_sha1(blob) == out
    assert original_classifier_name(blob) is None
    assert ORIGINAL_CLASSIFIER_BLOBS == {
        "300_model.pth": "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
        "500_model.pth": "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
    }


# --- output tables -----------------------------------------------------------------------------


def tricky_rows(rng):
    """Ids with several frames per chunk, unsorted chunks, and ties within and across frames."""
    ids, probs = [], []
    for chunk in ["b_chunk_2", "B_chunk_1", "a_chunk_10", "a_chunk_2", "ä_chunk_1", "a_chunk_1", 'q"x_chunk_1', "tie_chunk_1", "cross_chunk_1"]:
        for frame in rng.choice(["F1", "F2", "F3", "R1", "R2", "R3"], size=rng.integers(1, 7), replace=False):
            logits = torch.tensor(rng.normal(size=2) * 4, dtype=torch.float32)
            ids.append(chunk + frame)
            probs.append(torch.softmax(logits, 0))
    ids += ["tie_chunk_1F1", "cross_chunk_1F1", "cross_chunk_1R2", "small_chunk_1F1", "half_chunk_1R1", "half_chunk_1F2"]
    probs += [
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.9, 0.1]),
        torch.tensor([0.1, 0.9]),  # max score2 == max score1 across frames -> virus
        torch.softmax(torch.tensor([0.0, -11.0]), 0),  # scores printed in exponent form
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.25, 0.25]),
    ]
    order = rng.permutation(len(ids))
    return [ids[i] for i in order], torch.stack([probs[i] for i in order]).to(torch.float32)


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(5))
def test_tables_match_the_original_byte_for_byte(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ids, probs = tricky_rows(rng)
    C.write_predictions(ids, probs, tmp_path)
    assert read_outputs(tmp_path) == reference_outputs(ids, probs)


@pytest.mark.unit
def test_tables_with_nan_scores_match(tmp_path):
    ids = ["n_chunk_1F1", "n_chunk_1F2", "m_chunk_1F1", "m_chunk_1R1"]
    probs = torch.tensor([[math.nan, math.nan], [math.nan, math.nan], [math.nan, math.nan], [0.7, 0.3]])
    C.write_predictions(ids, probs, tmp_path)
    assert read_outputs(tmp_path) == reference_outputs(ids, probs)
    assert "n_chunk_1\tFalse" in read_outputs(tmp_path)[1]


@pytest.mark.unit
def test_tables_for_model_scores_match(model_file, tmp_path):
    loaded = C.load_classifier(model_file)
    ids = [f"r{i // 7}_chunk_{i % 3 + 1}{'FR'[i % 2]}{i % 3 + 1}" for i in range(500)]
    probs = C.predict(loaded, torch.randn(500, DIM))
    C.write_predictions(ids, probs, tmp_path)
    txt, csv_text = read_outputs(tmp_path)
    assert (txt, csv_text) == reference_outputs(ids, probs)
    assert txt.startswith("Sequence_ID\tPrediction\tscore1\tscore2\n") and csv_text.startswith("Modified_ID\tIs_Virus\n")


@pytest.mark.unit
def test_empty_input_writes_headers_only(tmp_path):
    C.write_predictions([], torch.empty(0, 2), tmp_path)
    assert read_outputs(tmp_path) == ("Sequence_ID\tPrediction\tscore1\tscore2\n", "Modified_ID\tIs_Virus\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [C.RESULTS_NAME, C.HIGHEST_NAME]


# --- classify_files ----------------------------------------------------------------------------


@pytest.mark.unit
def test_classify_files_concatenates_in_given_order(model_file, tmp_path):
    loaded = C.load_classifier(model_file)
    parts = []
    for k, n in [(2, 70), (1, 300), (3, 0)]:
        ids = [f"s{k}_{i}_chunk_1F{i % 3 + 1}" for i in range(n)]
        data = torch.randn(n, DIM)
        save_merged(tmp_path / f"output_{k}_merged.pt", {"ids": ids, "data": data})
        parts.append((ids, data))
    paths = [tmp_path / f"output_{k}_merged.pt" for k in (2, 1, 3)]
    out = tmp_path / "out"
    assert C.classify_files(model_file, paths, out) == 370
    ids = parts[0][0] + parts[1][0]
    probs = C.predict(loaded, torch.cat([parts[0][1], parts[1][1]]))
    assert read_outputs(out) == reference_outputs(ids, probs)


@pytest.mark.unit
def test_classify_files_with_no_files_writes_headers(model_file, tmp_path):
    assert C.classify_files(model_file, [], tmp_path) == 0
    assert read_outputs(tmp_path) == ("Sequence_ID\tPrediction\tscore1\tscore2\n", "Modified_ID\tIs_Virus\n")


@pytest.mark.unit
def test_classify_files_rejects_wrong_feature_width(model_file, tmp_path):
    good, bad = tmp_path / "output_1_merged.pt", tmp_path / "output_2_merged.pt"
    save_merged(good, {"ids": ["a_chunk_1F1"], "data": torch.randn(1, DIM)})
    save_merged(bad, {"ids": ["b_chunk_1F1"], "data": torch.randn(1, DIM + 2)})
    with pytest.raises(InputError) as excinfo:
        C.classify_files(model_file, [good, bad], tmp_path / "out")
    assert_one_line_error(excinfo, bad)
    assert not (tmp_path / "out" / C.RESULTS_NAME).exists()


@pytest.mark.unit
def test_classify_files_reads_original_merged_layout(model_file, tmp_path):
    # merge_data() saves a plain dict of a list of ids and a stacked tensor (plus 'labels' in training).
    path = tmp_path / "output_1_merged.pt"
    data = torch.stack([torch.randn(DIM) for _ in range(4)])
    torch.save({"ids": [f"x_chunk_1F{i}" for i in range(1, 5)], "data": data, "labels": [1]}, path)
    assert C.classify_files(model_file, [path], tmp_path) == 4


@pytest.mark.unit
def test_write_random_classifier_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    C.write_random_classifier(tmp_path / "m.pth", DIM)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.unit
def test_loaded_state_is_independent_of_the_file(model_file):
    a = C.load_classifier(model_file)
    a.state_dict["hidden_layer.weight"].zero_()
    b = C.load_classifier(model_file)
    assert b.state_dict["hidden_layer.weight"].abs().sum() > 0
    assert isinstance(b.state_dict, (dict, OrderedDict))
