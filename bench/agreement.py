"""Fast-vs-exact agreement figures: per-sequence cosine, and the classifier's labels and scores.

Used by tests/test_fast_agreement.py (tiny models, CPU), bench/throughput.py and bench/fast_precision.py
(real size, H200). `calibrated_shift` gives the issue's point-3 figures: with a classifier calibrated to split
the exact features 50/50, the mean shift of its logit (virus minus other) from exact to fast, the label
agreement, and the per-sequence cosine of each model; `BOUNDS` are the issue's bounds on them.
"""

import numpy as np


def cosines(a, b):
    """Per-row cosine similarity of two [N, D] float arrays (computed in float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embedding_summary(a, b):
    cos = cosines(a, b)
    return {"n": int(len(cos)), "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(np.asarray(a) - np.asarray(b)).max()),
            "std_exact": float(np.asarray(a).std()), "mean_per_dim_std_exact": float(np.asarray(a).std(0).mean())}


def classifier_agreement(classifier, dna_a, esm_a, dna_b, esm_b):
    """Merge (DNABERT-S first, then ESM-2, as the original) and classify both feature sets.

    `classifier` is a path to a .pth (e.g. from virnucflow.classifier.write_random_classifier) or a loaded
    state; returns label agreement (fraction), the largest |P(virus)| difference and the label counts."""
    from virnucflow.classifier import load_classifier, predict

    state = load_classifier(classifier) if not hasattr(classifier, "state_dict") else classifier
    pa = predict(state, np.concatenate([dna_a, esm_a], axis=1)).numpy()
    pb = predict(state, np.concatenate([dna_b, esm_b], axis=1)).numpy()
    la, lb = pa[:, 1] > pa[:, 0], pb[:, 1] > pb[:, 0]
    return {"n": int(len(la)), "label_agreement": float((la == lb).mean()), "labels_differ": int((la != lb).sum()),
            "max_score_diff": float(np.abs(pa - pb).max()), "virus_fraction_exact": float(la.mean())}


def calibrated_classifier(path, features):
    """A random classifier made informative for these features: BatchNorm statistics taken from them and the
    output bias set so that half the rows are called virus. (A random classifier left as is calls nearly
    every row one class, and label agreement then says nothing.) Returns a LoadedClassifier."""
    import torch

    from virnucflow.classifier import LoadedClassifier, _model, load_classifier

    loaded = load_classifier(path)
    model = _model(loaded)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    with torch.no_grad():
        model.train()
        model.bn1.reset_running_stats()
        model.bn1.momentum = None  # cumulative average over the batches
        for part in x.split(4096):
            model.bn1(model.hidden_layer(part))
        model.eval()
        logits = model(x)
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.output_layer.bias[1] -= margin / 2
        model.output_layer.bias[0] += margin / 2
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return LoadedClassifier(state, loaded.input_dim)


BOUNDS = {"mean_logit_shift": 0.002, "label_agreement": 0.9995, "cos_min": 0.99999}


def logits(classifier, features):
    """The classifier's logit of virus over other, float64 [N] (the boundary is 0)."""
    import torch

    from virnucflow.classifier import _model

    model = _model(classifier)
    with torch.no_grad():
        out = torch.cat([model(part) for part in torch.as_tensor(np.asarray(features), dtype=torch.float32)
                         .split(4096)]) if len(features) else torch.empty(0, 2)
    return (out[:, 1] - out[:, 0]).double().numpy()


def calibrated_shift(classifier_path, dna_exact, esm_exact, dna_fast, esm_fast):
    """Point 3's figures of fast features against exact ones (DNABERT-S first, as the original merges), with
    `classifier_path` calibrated on the exact features to split them 50/50; `within_bounds` says if all hold."""
    exact = np.concatenate([dna_exact, esm_exact], axis=1)
    fast = np.concatenate([dna_fast, esm_fast], axis=1)
    classifier = calibrated_classifier(classifier_path, exact)
    a, b = logits(classifier, exact), logits(classifier, fast)
    shift = b - a
    out = {"n": int(len(a)), "virus_fraction_exact": float((a > 0).mean()),
           "mean_logit_shift": float(shift.mean()), "mean_abs_logit_shift": float(np.abs(shift).mean()),
           "logit_std_exact": float(a.std()), "label_agreement": float(((a > 0) == (b > 0)).mean()),
           "labels_differ": int(((a > 0) != (b > 0)).sum()),
           "cos_min": {"dnabert_s": float(cosines(dna_exact, dna_fast).min()),
                       "esm2": float(cosines(esm_exact, esm_fast).min())},
           "cos_mean": {"dnabert_s": float(cosines(dna_exact, dna_fast).mean()),
                        "esm2": float(cosines(esm_exact, esm_fast).mean())}}
    out["within_bounds"] = bool(abs(out["mean_logit_shift"]) <= BOUNDS["mean_logit_shift"]
                                and out["label_agreement"] >= BOUNDS["label_agreement"]
                                and min(out["cos_min"].values()) >= BOUNDS["cos_min"])
    return out
