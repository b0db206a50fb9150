"""Shortcut audit: can a dataset's labels be read off its files without looking at the pixels?

Datasets leak their labels through the container: in GenImage the real images are JPEG (quality about
96) and the fakes PNG at fixed sizes, and detectors trained on it learn JPEG, not generation (Grommelt
et al. 2024, "Fake or JPEG?"). This module reads each file's metadata only (the header: PIL's
`Image.open` parses it and decodes no pixels): container format, JPEG quality estimated from the
quantisation tables, chroma subsampling, progressive, EXIF and ICC presence, width, height, mode and
bytes per pixel. A scikit-learn classifier on those features alone, stratified and cross-validated,
scores each generator against REAL: its out-of-fold ROC-AUC is what metadata alone reaches; each
feature's own out-of-fold AUC (a histogram classifier on that feature) says which features carry it.
0.5 is chance; an AUC above `audit.threshold` means a detector can score well by learning the
container, and the stage says so in one line naming the feature and the fix (`preprocess.jpeg_align`,
which re-encodes every image alike).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from aigi.data.images import is_image_file
from aigi.errors import AigiError

# The IJG (libjpeg) standard tables, natural (row-major) order, which PIL's `quantization` also uses.
LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32)], dtype=np.float64)
SUBSAMPLING = {-1: "none", 0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
CATEGORICAL = ("format", "subsampling", "mode")
NUMERIC = ("jpeg_quality", "progressive", "exif", "icc", "width", "height", "bytes_per_pixel")
FEATURES = CATEGORICAL + NUMERIC
# What to do about a leak, by the feature that carries it most.
SIZE_FIX = ("a detector can learn the size instead of the image; preprocess.resize: crop keeps native pixels "
            "where images are large enough, but sizes that differ per class stay visible: sample or resize the "
            "classes' originals alike")
FIX = {
    "bytes_per_pixel": "file size per pixel follows how compressible the content is (smooth or noisy images), "
                       "so with the same format and quality in every class it is the pixels talking, which "
                       "jpeg_align cannot remove; if the encoders differ, set preprocess.jpeg_align",
    "width": SIZE_FIX,
    "height": SIZE_FIX,
}
DEFAULT_FIX = ("a detector can learn the container instead of the image: set preprocess.jpeg_align (e.g. 96) so "
               "every image of every class is re-encoded alike")


def _ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


_IJG = {q: (_ijg_table(LUMA, q), _ijg_table(CHROMA, q)) for q in range(1, 101)}


def jpeg_quality(tables: dict[int, Any]) -> float:
    """The IJG quality (1..100) whose standard scaled tables are nearest to these quantisation tables.

    Exact for files written by libjpeg (PIL, most cameras' software, OpenCV); for custom tables
    (some cameras, Photoshop) the nearest standard quality, so still comparable across files.
    """
    luma = np.asarray(tables.get(0, []), dtype=np.float64)
    if luma.size != 64:
        return float("nan")
    chroma = np.asarray(tables.get(1, []), dtype=np.float64)
    best, best_err = 0, float("inf")
    for q, (lt, ct) in _IJG.items():
        err = np.abs(lt - luma).sum() + (np.abs(ct - chroma).sum() if chroma.size == 64 else 0.0)
        if err < best_err:
            best, best_err = q, err
    return float(best)


@dataclass(frozen=True)
class FileMeta:
    format: str
    subsampling: str
    mode: str
    jpeg_quality: float  # 0 for a file that is not JPEG
    progressive: int
    exif: int
    icc: int
    width: int
    height: int
    bytes_per_pixel: float


def file_meta(path: Path) -> FileMeta:
    """The metadata features of one image file, from its header only (no pixels are decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:  # lazy: parses the header, decodes nothing
            fmt = img.format or "unknown"
            is_jpeg = fmt in ("JPEG", "MPO")
            info = img.info
            return FileMeta(
                format=fmt,
                subsampling=SUBSAMPLING.get(JpegImagePlugin.get_sampling(img), "other") if is_jpeg else "none",
                mode=img.mode,
                jpeg_quality=jpeg_quality(getattr(img, "quantization", None) or {}) if is_jpeg else 0.0,
                progressive=int(bool(info.get("progressive") or info.get("progression"))),
                exif=int(bool(info.get("exif"))),
                icc=int(bool(info.get("icc_profile"))),
                width=img.width,
                height=img.height,
                bytes_per_pixel=path.stat().st_size / max(1, img.width * img.height),
            )


def scan(root: Path, max_per_class: int | str, seed: int) -> tuple[list[str], list[FileMeta], list[str]]:
    """Class and metadata of the images of `root/{train,test}/<CLASS>/` (at most `max_per_class` per
    class, a seeded sample over both splits); and the files that could not be opened."""
    files: dict[str, list[Path]] = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            files.setdefault(folder.name, []).extend(
                sorted(f for f in folder.iterdir() if f.is_file() and is_image_file(f)))
    if "REAL" not in files:
        raise AigiError(f"{root}: no REAL class in {{train,test}}/ (found: {', '.join(sorted(files)) or 'nothing'}); "
                        f"re-run the download stage")
    if len(files) < 2:
        raise AigiError(f"{root}: only REAL images; the audit needs at least one generator's")
    rng = np.random.default_rng(seed)
    labels, metas, unreadable = [], [], []
    for name in sorted(files, key=lambda n: (n != "REAL", n.lower())):
        paths = files[name]
        if max_per_class != "all" and len(paths) > max_per_class:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), size=max_per_class, replace=False))]
        for f in paths:
            try:
                metas.append(file_meta(f))
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
                unreadable.append(f.relative_to(root).as_posix())
                continue
            labels.append(name)
    return labels, metas, unreadable


def _design(metas: list[FileMeta], features: tuple[str, ...]) -> np.ndarray:
    """Feature matrix: categorical features one-hot, numeric ones as they are (trees need no scaling)."""
    cols = []
    for f in features:
        values = [getattr(m, f) for m in metas]
        if f in CATEGORICAL:
            for level in sorted(set(values)):
                cols.append([float(v == level) for v in values])
        else:
            cols.append([float(v) for v in values])
    return np.array(cols, dtype=np.float64).T


def cross_validated_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Out-of-fold ROC-AUC of a gradient-boosted tree classifier on `x` (stratified k-fold)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if np.ptp(x, axis=0).max(initial=0.0) == 0:
        return 0.5  # every file alike: nothing to learn (and the classifier would only echo the base rate)
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=5,
                                         random_state=seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def single_feature_auc(values: list, y: np.ndarray, folds: int, seed: int, bins: int = 32) -> float:
    """Out-of-fold ROC-AUC of one feature alone, any shape of dependence: each fold scores an image by its
    value's fake rate among the other folds' images (per distinct value, or per quantile bin when there
    are more than `bins` values; add-one smoothed). A histogram classifier: fast, and it needs no scaling."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if len(set(values)) < 2:
        return 0.5
    if isinstance(values[0], str):
        codes = {v: i for i, v in enumerate(sorted(set(values)))}
        x = np.array([codes[v] for v in values], dtype=np.float64)
    else:
        x = np.asarray(values, dtype=np.float64)
    scores = np.empty(len(y))
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        distinct = np.unique(x[train])
        edges = distinct if len(distinct) <= bins else np.unique(np.quantile(x[train], np.linspace(0, 1, bins + 1)))
        which = lambda v, e=edges: np.clip(np.searchsorted(e, v, side="right") - 1, 0, len(e) - 1)  # noqa: E731
        fake = np.bincount(which(x[train]), weights=y[train], minlength=len(edges))
        total = np.bincount(which(x[train]), minlength=len(edges))
        scores[test] = ((fake + 1) / (total + 2))[which(x[test])]
    return float(roc_auc_score(y, scores))


def summarise(metas: list[FileMeta]) -> dict[str, Any]:
    """What one class's files look like: the most common value of each categorical feature, the
    median and range of the numeric ones."""
    out: dict[str, Any] = {"n": len(metas)}
    for f in CATEGORICAL:
        out[f] = dict(Counter(getattr(m, f) for m in metas).most_common(3))
    for f in NUMERIC:
        v = np.array([getattr(m, f) for m in metas], dtype=np.float64)
        out[f] = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    return out


def audit(root: Path, threshold: float = 0.75, folds: int = 5, max_per_class: int | str = 2000,
          seed: int = 0) -> dict[str, Any]:
    """The audit of the raw images folder `root/{train,test}/<CLASS>/`: what `metrics/audit/<name>.json` holds.

    Per generator vs REAL: `roc_auc` (all features, out of fold), `feature_auc` (each feature alone),
    `top_feature`, `flagged` (roc_auc above `threshold`); per class a summary of its files; `warnings`,
    one line per flagged generator.
    """
    labels, metas, unreadable = scan(Path(root), max_per_class, seed)
    names = np.array(labels)
    generators = [c for c in dict.fromkeys(labels) if c != "REAL"]
    result: dict[str, Any] = {
        "threshold": threshold, "folds": folds, "features": list(FEATURES),
        "classes": {c: summarise([m for m, n in zip(metas, labels, strict=True) if n == c])
                    for c in ["REAL", *generators]},
        "unreadable": len(unreadable), "unreadable_examples": unreadable[:10],
        "generators": {}, "warnings": [],
    }
    for g in generators:
        mask = (names == "REAL") | (names == g)
        sub = [m for m, keep in zip(metas, mask, strict=True) if keep]
        y = (names[mask] == g).astype(int)
        k = min(folds, int(y.sum()), int((1 - y).sum()))
        if k < 2:
            result["generators"][g] = {"n_real": int((1 - y).sum()), "n_fake": int(y.sum()), "roc_auc": None,
                                       "note": "too few images for cross-validation"}
            continue
        single = {f: single_feature_auc([getattr(m, f) for m in sub], y, k, seed) for f in FEATURES}
        # An AUC below 0.5 out of fold is chance plus noise, never a usable signal the other way round.
        top = max(single, key=lambda f: single[f])
        auc = cross_validated_auc(_design(sub, FEATURES), y, k, seed)
        row = {"n_real": int((1 - y).sum()), "n_fake": int(y.sum()), "folds": k, "roc_auc": auc,
               "feature_auc": dict(sorted(single.items(), key=lambda kv: -kv[1])), "top_feature": top,
               "flagged": auc > threshold}
        result["generators"][g] = row
        if row["flagged"]:
            result["warnings"].append(warning_line(g, auc, top, single[top], threshold))
    return result


def warning_line(generator: str, auc: float, feature: str, feature_auc: float, threshold: float) -> str:
    """The one line the stage and the report print for a generator whose files give its label away."""
    return (f"audit: {generator} vs REAL: file metadata alone reaches ROC-AUC {auc:.3f} (> audit.threshold "
            f"{threshold:g}), mostly through `{feature}` (AUC {feature_auc:.3f} alone); "
            f"{FIX.get(feature, DEFAULT_FIX)}")


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write `result` to `path` whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(path)
