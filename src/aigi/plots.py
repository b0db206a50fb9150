"""Plot files: CSVs that `dvc plots show/diff` render (dvc.yaml declares them) and PNGs for the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn import metrics as skm

from aigi.classes import DETECTION


def write_score_plots(folder: Path, y: np.ndarray, p_fake: np.ndarray, threshold: float, title: str) -> None:
    """ROC, precision-recall and confusion data (CSV) plus a PNG of the two curves."""
    folder.mkdir(parents=True, exist_ok=True)
    fpr, tpr, _ = skm.roc_curve(y, p_fake)
    precision, recall, _ = skm.precision_recall_curve(y, p_fake)
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(folder / "roc.csv", index=False)
    pd.DataFrame({"recall": recall, "precision": precision}).to_csv(folder / "pr.csv", index=False)
    pred = (p_fake >= threshold).astype(int)
    pd.DataFrame({"actual": np.array(DETECTION)[y], "predicted": np.array(DETECTION)[pred]}).to_csv(
        folder / "confusion.csv", index=False
    )
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4))
    ax1.plot(fpr, tpr)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({title})")
    ax2.plot(recall, precision)
    ax2.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({title})")
    _confusion_image(ax3, skm.confusion_matrix(y, pred, labels=[0, 1]), DETECTION, "confusion")
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)


def _confusion_image(ax, cm: np.ndarray, names: Sequence[str], title: str) -> None:
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ticks = list(range(len(names)))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title=title)
    ax.set_xticklabels(names, rotation=45 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center")
    ax.set_yticklabels(names)


def write_attribution_plots(folder: Path, classes: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                            title: str) -> None:
    """N-way confusion of the argmax class: `attribution_confusion.csv` (DVC confusion plot) and its PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    names, pred = np.array(classes), probs.argmax(axis=1)
    pd.DataFrame({"actual": names[labels], "predicted": names[pred]}).to_csv(
        folder / "attribution_confusion.csv", index=False)
    cm = skm.confusion_matrix(labels, pred, labels=list(range(len(classes))))
    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    _confusion_image(ax, cm, classes, f"attribution ({title})")
    fig.tight_layout()
    fig.savefig(folder / "attribution_confusion.png", dpi=100)
    plt.close(fig)


def write_training_curves(folder: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch train/val loss and accuracy: `loss.csv`, `accuracy.csv` (DVC plots) and `curves.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history)
    frame[["epoch", "train_loss", "val_loss"]].to_csv(folder / "loss.csv", index=False)
    frame[["epoch", "train_accuracy", "val_accuracy"]].to_csv(folder / "accuracy.csv", index=False)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax1.plot(frame["epoch"], frame[f"{split}_loss"], marker="o", label=split)
        ax2.plot(frame["epoch"], frame[f"{split}_accuracy"], marker="o", label=split)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)


ROBUSTNESS_AXES = {"jpeg": "JPEG quality", "blur": "Gaussian blur sigma (px)", "rescale": "down-then-up factor"}


def write_robustness_plots(folder: Path, table: pd.DataFrame) -> None:
    """`robustness.csv` (one row per condition, a DVC bar plot) and `robustness.png` (metric vs level per kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    table[["perturbation", "kind", "level", "accuracy", "roc_auc"]].to_csv(folder / "robustness.csv", index=False)
    clean = table[table["kind"] == "clean"].iloc[0]
    kinds = [k for k in ROBUSTNESS_AXES if (table["kind"] == k).any()]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.2 * max(len(kinds), 1), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        rows = table[table["kind"] == kind].sort_values("level")
        for metric, colour in (("accuracy", "C0"), ("roc_auc", "C1")):
            ax.plot(rows["level"], rows[metric], marker="o", c=colour, label=metric)
            ax.axhline(clean[metric], ls=":", c=colour, label=f"{metric} (clean)")
        ax.set(xlabel=ROBUSTNESS_AXES[kind], ylim=(0, 1.02), title=kind)
        if kind in ("jpeg", "rescale"):
            ax.invert_xaxis()  # left to right: milder to harsher
    axes[0][0].set_ylabel("metric")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(folder / "robustness.png", dpi=100)
    plt.close(fig)


def write_generalisation_heatmap(path: Path, sets: Sequence[str], columns: Sequence[str], finetuned: np.ndarray,
                                 zeroshot: np.ndarray) -> None:
    """ROC-AUC per test set (rows) and generator (columns; NaN: not in that set), fine-tuned beside zero-shot,
    as one PNG: 0.5 is chance (white), 1 is perfect (dark blue), below 0.5 worse than chance (red)."""
    width = max(6.0, 1.0 + 0.75 * len(columns))
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 1.4 + 0.5 * len(sets)), squeeze=False)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    for ax, values, title in zip(axes[0], (finetuned, zeroshot), ("fine-tuned", "zero-shot"), strict=True):
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v - 0.5) > 0.35 else "black")
        ax.set(xticks=range(len(columns)), yticks=range(len(sets)), title=f"ROC-AUC vs REAL ({title})")
        ax.set_xticklabels(columns, rotation=45, ha="right")
        ax.set_yticklabels(sets if ax is axes[0][0] else [])  # the same rows: named once, on the left
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def write_reliability_plots(folder: Path, curves: dict[str, dict[str, list]], title: str) -> None:
    """Reliability diagrams: `reliability_<name>.csv` per curve (bin, confidence, accuracy, count; a DVC plot
    of accuracy against confidence) and `reliability.png` (every curve against the diagonal, counts below).

    `curves`: name (e.g. before / after temperature scaling, zero-shot / fine-tuned) -> the bins of
    `aigi.calibration.reliability_bins`."""
    folder.mkdir(parents=True, exist_ok=True)
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfectly calibrated")
    for i, (name, bins) in enumerate(curves.items()):
        frame = pd.DataFrame(bins, columns=["bin", "confidence", "accuracy", "count"])
        frame.to_csv(folder / f"reliability_{name}.csv", index=False)
        ax.plot(frame["confidence"], frame["accuracy"], marker="o", c=f"C{i}", label=name)
        counts.bar(frame["confidence"] + (i - (len(curves) - 1) / 2) * 0.012, frame["count"], width=0.012,
                   color=f"C{i}")
    lo = min((min(b["confidence"]) for b in curves.values() if b["confidence"]), default=0.5)
    ax.set(xlim=(min(lo, 0.5) - 0.02, 1.01), ylim=(0, 1.02), ylabel="accuracy", title=f"reliability ({title})")
    ax.legend(fontsize=8, loc="upper left")
    counts.set(xlabel="confidence of the decided class", ylabel="images")
    fig.tight_layout()
    fig.savefig(folder / "reliability.png", dpi=100)
    plt.close(fig)
