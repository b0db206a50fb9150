import numpy as np
import pytest
from sklearn import metrics as skm

from aigi import metrics


def _scores(n: int, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1)
    return y, np.round(p, 1) if ties else p


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_resamples_match_scikit_learn(ties):
    y, p = _scores(200, ties=ties)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(y), (6, len(y)))
    weights = np.stack([np.bincount(row, minlength=len(y)) for row in idx])
    fast = metrics.resample_metrics(y, p, 0.4, weights)
    for b, row in enumerate(idx):
        slow = metrics.scalar_metrics(y[row], p[row], 0.4)
        for k in metrics.SCALARS:
            assert fast[k][b] == pytest.approx(slow[k], abs=1e-12), k


def _tpr_at_fpr_brute_force(y, p, budget):
    """Every threshold tried: the largest TPR among those calling at most budget x n_real REAL images fake."""
    real, fake = p[y == 0], p[y == 1]
    best = 0.0
    for t in [*np.unique(p), np.inf]:
        if (real >= t).sum() <= budget * len(real) + 1e-9:
            best = max(best, float((fake >= t).mean()))
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [37, 200, 1000])
def test_tpr_at_fpr_is_the_best_tpr_within_the_budget(n, ties):
    y, p = _scores(n, seed=n, ties=ties)
    for budget in (0.01, 0.05, 0.2):
        direct = metrics.tpr_at_fpr(y, p, budget)
        assert direct == pytest.approx(_tpr_at_fpr_brute_force(y, p, budget), abs=1e-12), budget
        fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)  # the same point read off scikit-learn's ROC
        assert direct == pytest.approx(tpr[np.round(fpr * (y == 0).sum()) <= np.floor(budget * (y == 0).sum() + 1e-9)]
                                       .max(), abs=1e-12)
    point = metrics.scalar_metrics(y, p, 0.5)
    assert point["tpr_at_fpr_1"] <= point["tpr_at_fpr_5"]


def test_tpr_at_fpr_by_hand():
    y = np.array([0] * 10 + [1] * 4)
    p = np.r_[np.linspace(0.0, 0.9, 10), [0.95, 0.85, 0.5, 0.1]]  # REAL scores 0, 0.1, ..., 0.9
    # 5% of 10 REAL: none may be flagged, so the threshold lies above 0.9: one fake (0.95) of four
    assert metrics.tpr_at_fpr(y, p, 0.05) == 0.25
    # 10%: one REAL (0.9) may be flagged, the threshold lies above 0.8: 0.95 and 0.85
    assert metrics.tpr_at_fpr(y, p, 0.1) == 0.5
    assert metrics.tpr_at_fpr(y, p, 1.0) == 1.0
    assert np.isnan(metrics.tpr_at_fpr(y[y == 1], p[y == 1], 0.05))


def test_balanced_and_per_class_accuracy_match_scikit_learn():
    y, p = _scores(300)
    out = metrics.scalar_metrics(y, p, 0.4)
    pred = (p >= 0.4).astype(int)
    assert out["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert out["accuracy_real"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert out["accuracy_fake"] == pytest.approx(out["recall"])
    only_fake = metrics.scalar_metrics(y[y == 1], p[y == 1], 0.4)
    assert np.isnan(only_fake["accuracy_real"]) and np.isnan(only_fake["balanced_accuracy"])
    assert only_fake["accuracy_fake"] == pytest.approx(out["accuracy_fake"])


def test_resample_with_one_class_has_no_ranking_metrics():
    y, p = _scores(50)
    weights = (y == 1).astype(int)[None, :]  # only FAKE images drawn
    out = metrics.resample_metrics(y, p, 0.5, weights)
    assert np.isnan(out["roc_auc"][0]) and np.isnan(out["average_precision"][0])
    assert np.isnan(out["tpr_at_fpr_1"][0]) and np.isnan(out["accuracy_real"][0])
    assert out["accuracy"][0] == pytest.approx(metrics.scalar_metrics(y[y == 1], p[y == 1], 0.5)["accuracy"])


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    y, p = _scores(300)
    a = metrics.bootstrap_intervals(y, p, 0.5, 400, seed=7)
    b = metrics.bootstrap_intervals(y, p, 0.5, 400, seed=7)
    c = metrics.bootstrap_intervals(y, p, 0.5, 400, seed=8)
    assert a == b and a != c
    point = metrics.scalar_metrics(y, p, 0.5)
    for k in metrics.SCALARS:
        lo, hi = a[k]
        # TPR at 1% FPR of ~150 REAL images hangs on their one or two highest scores: a wide interval
        assert lo <= point[k] <= hi and hi - lo < (0.6 if k in metrics.FPR_BUDGETS else 0.25), k


def test_threshold_changes_the_decision_metrics_only():
    y, p = _scores(300)
    low, high = metrics.evaluate(y, p, 0.2, 0, 0), metrics.evaluate(y, p, 0.8, 0, 0)
    assert low["recall"] > high["recall"] and low["confusion"]["tp"] > high["confusion"]["tp"]
    assert low["roc_auc"] == high["roc_auc"] and "ci95" not in low


def test_per_content_class_accuracy():
    files = ["test/REAL/0.jpg", "test/REAL/1.jpg", "test/FAKE/0 (4).jpg", "test/FAKE/1 (4).jpg", "test/REAL/2 (4).jpg"]
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([0.1, 0.9, 0.8, 0.3, 0.2])
    out = metrics.evaluate(y, p, 0.5, 0, 0, files=files)["per_content_class"]
    assert out == {
        "airplane": {"REAL": {"n": 2, "accuracy": 0.5}},
        "cat": {"REAL": {"n": 1, "accuracy": 1.0}, "FAKE": {"n": 2, "accuracy": 0.5}},
    }
    assert "per_content_class" not in metrics.evaluate(y, p, 0.5, 0, 0, files=[*files[:4], "x/other.jpg"])


# ---- several generators ------------------------------------------------------------------------------------

# metrics/eval.json and zeroshot.json of a CIFAKE (2-class) run: the keys from before several generators
# existed, plus the detection metrics of the generalisation issue (14); no per-generator sections.
TWO_CLASS_KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "brier", "n",
                  "threshold", "confusion", "ci95", "per_content_class",
                  "balanced_accuracy", "accuracy_real", "accuracy_fake", "tpr_at_fpr_1", "tpr_at_fpr_5"}


def _n_way(n_per_class: int = 60, seed: int = 0):
    """Four classes of scores that mostly pick the true class, plus 30 images of an unseen generator."""
    rng = np.random.default_rng(seed)
    classes = ["REAL", "A", "B", "C"]
    labels = np.repeat(np.arange(4), n_per_class)
    probs = rng.dirichlet(np.ones(4), len(labels))
    probs[np.arange(len(labels)), labels] += 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    names = np.array(classes, dtype=object)[labels]
    unseen = rng.dirichlet([1, 2, 2, 2], 30)
    return (classes, np.r_[labels, np.full(30, -1)], np.r_[names, np.full(30, "D", dtype=object)],
            np.vstack([probs, unseen]))


def test_two_class_metrics_keep_exactly_their_keys():
    y = np.repeat([0, 1], 20)
    probs = np.stack([1 - np.linspace(0, 1, 40), np.linspace(0, 1, 40)], axis=1)
    files = [f"x/{i} ({i % 10 + 1}).jpg" for i in range(40)]
    out = metrics.evaluate_classes(["REAL", "FAKE"], y, np.array(["REAL", "FAKE"])[y], probs, 0.5, 20, 0, files)
    assert set(out) == TWO_CLASS_KEYS
    assert out == metrics.evaluate(y, 1 - probs[:, 0], 0.5, 20, 0, files=files)  # P(fake) = 1 − P(REAL)
    assert set(out["ci95"]) == set(metrics.SCALARS) and set(out["confusion"]) == {"tn", "fp", "fn", "tp"}


def test_n_way_metrics_follow_the_contract_and_match_scikit_learn():
    classes, labels, names, probs = _n_way()
    out = metrics.evaluate_classes(classes, labels, names, probs, 0.5, 200, 0)
    seen = labels >= 0
    att = out["attribution"]
    pred = probs[seen].argmax(axis=1)
    assert att["accuracy"] == pytest.approx(skm.accuracy_score(labels[seen], pred))
    assert att["macro_f1"] == pytest.approx(skm.f1_score(labels[seen], pred, average="macro"))
    for k in ("accuracy", "macro_f1"):
        lo, hi = att["ci95"][k]
        assert lo < att[k] < hi
    assert set(att["per_class"]) == set(classes) and att["per_class"]["B"]["n"] == 60
    assert att["per_class"]["B"]["recall"] == pytest.approx(skm.recall_score(labels[seen], pred, labels=[2],
                                                                             average="macro"))
    assert att["confusion"]["A"]["A"] == int(((labels == 1) & (probs.argmax(axis=1) == 1)).sum())
    assert sum(sum(row.values()) for row in att["confusion"].values()) == seen.sum()
    # Detection on the trained classes only: the unseen generator is reported apart.
    assert out["n"] == seen.sum()
    assert set(out["per_generator"]) == {"A", "B", "C"} and set(out["unseen"]) == {"D"}
    row = out["per_generator"]["A"]
    assert set(row) == {"n", "seen", "flagged_fake", "flagged_fake_ci95", "roc_auc", "roc_auc_ci95",
                        "average_precision", "average_precision_ci95", "tpr_at_fpr_1", "tpr_at_fpr_1_ci95",
                        "attribution_recall"}
    assert row["seen"] is True and out["unseen"]["D"]["seen"] is False
    p_fake = 1 - probs[:, 0]
    mask = (names == "REAL") | (names == "A")
    assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(names[mask] == "A", p_fake[mask]))
    assert row["flagged_fake"] == pytest.approx((p_fake[names == "A"] >= 0.5).mean())
    assert row["tpr_at_fpr_1"] == metrics.tpr_at_fpr((names[mask] == "A").astype(int), p_fake[mask], 0.01)
    assert row["attribution_recall"] == att["per_class"]["A"]["recall"]
    assert set(out["unseen"]["D"]) == set(row) - {"attribution_recall"}
    assert out["unseen"]["D"]["n"] == 30


def test_no_bootstrap_means_no_intervals_anywhere():
    out = metrics.evaluate_classes(*_n_way(), 0.5, 0, 0)
    assert "ci95" not in out and "ci95" not in out["attribution"]
    assert not any(k.endswith("_ci95") for row in out["per_generator"].values() for k in row)


def test_ece_is_of_the_decision_at_the_threshold():
    y, p = np.array([1, 1]), np.array([0.35, 0.65])
    # at 0.3 both are decided FAKE (right) with confidence 0.35 and 0.65: ECE = (0.65 + 0.35) / 2
    assert metrics.evaluate(y, p, 0.3, 0, 0)["ece"] == pytest.approx(0.5)
    # at 0.5 the first is decided REAL (wrong) with confidence 0.65, in the second's bin: |0.5 - 0.65|
    assert metrics.evaluate(y, p, 0.5, 0, 0)["ece"] == pytest.approx(0.15)
    weights = np.ones((1, 2), int)
    assert metrics.resample_metrics(y, p, 0.3, weights)["ece"][0] == pytest.approx(0.5)
