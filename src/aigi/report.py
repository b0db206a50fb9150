"""The experiment report: `reports/report.md` (with PNGs beside it) and a self-contained `report.html`."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from aigi.cifake import CIFAR10_CLASSES, content_class
from aigi.classes import DETECTION, REAL, display
from aigi.metrics import SCALARS
from aigi.params import Params
from aigi.plots import write_generalisation_heatmap


def _cell(result: dict[str, Any], key: str) -> str:
    value = f"{result[key]:.4f}"
    ci = result.get("ci95", {}).get(key)
    return f"{value} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else value


def comparison_table(zeroshot: dict[str, Any], finetuned: dict[str, Any]) -> str:
    rows = ["| metric | zero-shot | fine-tuned |", "|---|---|---|"]
    rows += [f"| {k} | {_cell(zeroshot, k)} | {_cell(finetuned, k)} |" for k in SCALARS]
    def confusion(r: dict[str, Any]) -> str:
        c = r["confusion"]
        return f"TN {c['tn']} · FP {c['fp']} · FN {c['fn']} · TP {c['tp']}"

    rows.append(f"| confusion (FAKE positive) | {confusion(zeroshot)} | {confusion(finetuned)} |")
    return "\n".join(rows)


def mistakes_grid(predictions: pd.DataFrame, images: np.ndarray, count: int, threshold: float, path: Path) -> int:
    """The `count` most confident mistakes (the images the model saw) as one PNG; returns how many were shown."""
    pred = (predictions["p_fake"] >= threshold).astype(int)
    truth = (predictions["label_name"] != REAL).astype(int) if "label_name" in predictions else predictions["label"]
    wrong = predictions[pred != truth].copy()
    wrong["confidence"] = np.where(pred[wrong.index] == 1, wrong["p_fake"], 1 - wrong["p_fake"])
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(count)
    if wrong.empty:
        return 0
    cols = min(8, len(wrong))
    rows = int(np.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, r) in zip(axes.flat, wrong.iterrows(), strict=False):
        ax.imshow(images[int(r["index"])])
        subject = content_class(str(r.get("file", "")))
        true = r["label_name"] if "label_name" in r else DETECTION[int(r["label"])]
        ax.set_title(f"true {true}{f', {subject}' if subject else ''}\n"
                     f"P(fake)={r['p_fake']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return len(wrong)


def robustness_table(clean: dict[str, Any], robust: dict[str, dict[str, Any]]) -> str:
    rows = ["| condition | accuracy | ROC-AUC | F1 | ECE | accuracy change |", "|---|---|---|---|---|---|"]
    for name, r in (("clean", clean), *robust.items()):
        change = "" if name == "clean" else f"{r['accuracy'] - clean['accuracy']:+.4f}"
        rows.append(f"| {name} | {_cell(r, 'accuracy')} | {_cell(r, 'roc_auc')} | {r['f1']:.4f} | {r['ece']:.4f} "
                    f"| {change} |")
    return "\n".join(rows)


def content_class_table(zeroshot: dict[str, Any], finetuned: dict[str, Any]) -> str | None:
    """Accuracy per subject, REAL and FAKE, fine-tuned and zero-shot; None when the names carry no subject."""
    ft, zs = finetuned.get("per_content_class"), zeroshot.get("per_content_class", {})
    if not ft:
        return None

    def cell(table: dict[str, Any], subject: str, label: str) -> str:
        entry = table.get(subject, {}).get(label)
        return f"{entry['accuracy']:.3f} (n={entry['n']})" if entry else "–"

    rows = ["| subject | fine-tuned REAL | fine-tuned FAKE | zero-shot REAL | zero-shot FAKE |",
            "|---|---|---|---|---|"]
    rows += [f"| {s} | {cell(ft, s, 'REAL')} | {cell(ft, s, 'FAKE')} | {cell(zs, s, 'REAL')} | {cell(zs, s, 'FAKE')} |"
             for s in CIFAR10_CLASSES if s in ft]
    return "\n".join(rows)


def _interval(row: dict[str, Any], key: str) -> str:
    ci = row.get(f"{key}_ci95")
    value = row.get(key)
    if value is None:
        return "–"
    return f"{value:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.4f}"


def class_table(manifest: dict[str, Any]) -> str:
    """Every class with its display name and image count per split; held-out generators marked."""
    names = manifest.get("display_names", {})
    unseen = manifest.get("unseen_generators", [])
    splits = manifest["splits"]
    rows = ["| class | name | " + " | ".join(splits) + " | role |", "|---|---|" + "---|" * (len(splits) + 1)]
    for c in [*manifest.get("classes", []), *unseen]:
        role = "real" if c == REAL else ("unseen generator (test only)" if c in unseen else "generator")
        counts = " | ".join(f"{info['per_class'].get(c, 0):,}" for info in splits.values())
        rows.append(f"| {c} | {display(c, names)} | {counts} | {role} |")
    return "\n".join(rows)


def attribution_table(zeroshot: dict[str, Any], finetuned: dict[str, Any]) -> str:
    """N-way accuracy and macro-F1, then per-class precision and recall, zero-shot vs fine-tuned."""
    zs, ft = zeroshot.get("attribution", {}), finetuned["attribution"]
    rows = ["| metric | zero-shot | fine-tuned |", "|---|---|---|"]
    rows += [f"| {k} | {_cell(zs, k) if zs else '–'} | {_cell(ft, k)} |" for k in ("accuracy", "macro_f1")]
    for name, row in ft["per_class"].items():
        z = zs.get("per_class", {}).get(name)
        for k in ("precision", "recall"):
            rows.append(f"| {name} {k} (n={row['n']}) | {f'{z[k]:.4f}' if z else '–'} | {row[k]:.4f} |")
    return "\n".join(rows)


def confusion_table(attribution: dict[str, Any]) -> str:
    cm = attribution["confusion"]
    names = list(cm)
    rows = ["| actual \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows += [f"| {a} | " + " | ".join(str(cm[a][p]) for p in names) + " |" for a in names]
    return "\n".join(rows)


def generator_table(rows: dict[str, dict[str, Any]], recall: bool) -> str:
    """Per generator: n, share flagged as fake, ROC-AUC against REAL (with intervals), attribution recall."""
    head = "| generator | n | flagged as fake | ROC-AUC vs REAL |" + (" attribution recall |" if recall else "")
    out = [head, "|---|---|---|---|" + ("---|" if recall else "")]
    for g, r in rows.items():
        line = f"| {g} | {r['n']:,} | {_interval(r, 'flagged_fake')} | {_interval(r, 'roc_auc')} |"
        out.append(line + (f" {r['attribution_recall']:.4f} |" if recall else ""))
    return "\n".join(out)


def generator_sections(zeroshot: dict[str, Any], finetuned: dict[str, Any], figure: Path | None,
                       assets: Path) -> list[str]:
    """Attribution, per-generator and unseen-generator sections (only for data with several generators)."""
    md: list[str] = []
    if att := finetuned.get("attribution"):
        md += ["## Attribution: which generator made it (test split)", "",
               "The most likely class (argmax over REAL and every generator) against the true class.", "",
               attribution_table(zeroshot, finetuned), "", "Fine-tuned confusion matrix (rows: actual):", "",
               confusion_table(att), ""]
        if figure and (line := _copy_figure(figure, assets, FIGURES["attribution"])):
            md += [line, ""]
    if per := finetuned.get("per_generator"):
        md += ["## Detection per generator (fine-tuned)", "",
               "Each generator's test images: the share flagged as fake at the threshold, and the ROC-AUC of "
               "P(fake) on its images against the REAL ones.", "", generator_table(per, recall=True), ""]
    if unseen := finetuned.get("unseen"):
        md += ["## Unseen generators (held out of training; fine-tuned)", "",
               "Generators in `evaluate.unseen_generators` never reached train or val: does detection carry "
               "over to them?", "", generator_table(unseen, recall=False), ""]
    return md


ALL_FAKES = "all fakes"  # the row and heat-map column of a test set's detection over every generator


def _set_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, dict[str, float]]]]:
    """(class, role, {model: {n, auc, ap, tpr1, flagged}}) for one test set: REAL (flagged = its false-positive
    rate at the threshold), every generator at once, then each generator, seen ones first."""
    def real(r: dict[str, Any]) -> dict[str, float]:
        c = r["confusion"]
        return {"n": c["tn"] + c["fp"], "flagged": c["fp"] / max(c["tn"] + c["fp"], 1)}

    def fakes(r: dict[str, Any]) -> dict[str, float]:
        c = r["confusion"]
        return {"n": c["tp"] + c["fn"], "auc": r["roc_auc"], "ap": r["average_precision"],
                "tpr1": r.get("tpr_at_fpr_1"), "flagged": c["tp"] / max(c["tp"] + c["fn"], 1)}

    def generator(row: dict[str, Any] | None) -> dict[str, float]:
        if row is None:
            return {}
        return {"n": row["n"], "auc": row.get("roc_auc"), "ap": row.get("average_precision"),
                "tpr1": row.get("tpr_at_fpr_1"), "flagged": row["flagged_fake"]}

    models = ("zeroshot", "finetuned")
    rows = [(REAL, "real", {m: real(results[m]) for m in models}),
            (ALL_FAKES, "detection", {m: fakes(results[m]) for m in models})]
    ft = results["finetuned"]
    for group, role in (("per_generator", "seen"), ("unseen", "unseen")):
        for g in ft.get(group, {}):
            rows.append((g, role, {m: generator(results[m].get(group, {}).get(g)) for m in models}))
    return rows


def generalisation_table(test_sets: dict[str, dict[str, dict[str, Any]]], trained_on: str) -> str:
    """Rows: test set and class; columns: zero-shot vs fine-tuned ROC-AUC, AP, TPR at 1% FPR, share flagged."""
    def f(v: Any) -> str:
        return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"

    head = ("| test set | class | n | AUC zero-shot | AUC fine-tuned | AP zero-shot | AP fine-tuned "
            "| TPR@1%FPR zero-shot | TPR@1%FPR fine-tuned | flagged zero-shot | flagged fine-tuned |")
    out = [head, "|---|---|---|" + "---|" * 8]
    for name, results in test_sets.items():
        label = f"{name} (trained on)" if name == trained_on else name
        for cls, role, m in _set_rows(results):
            zs, ft = m["zeroshot"], m["finetuned"]
            shown = {"real": f"{REAL} (false positives)", "detection": ALL_FAKES}.get(role, f"{cls} ({role})")
            out.append(f"| {label} | {shown} | {ft.get('n', zs.get('n', 0)):,} | "
                       + " | ".join(f"{f(zs.get(k))} | {f(ft.get(k))}" for k in ("auc", "ap", "tpr1", "flagged"))
                       + " |")
    return "\n".join(out)


def generalisation_section(test_sets: dict[str, dict[str, dict[str, Any]]], trained_on: str,
                           assets: Path) -> list[str]:
    """The Generalisation section: the table and the heat map of ROC-AUC, test set x generator."""
    columns: list[str] = [ALL_FAKES]
    for results in test_sets.values():
        columns += [cls for cls, role, _ in _set_rows(results)[2:] if cls not in columns]
    grids = {m: np.full((len(test_sets), len(columns)), np.nan) for m in ("finetuned", "zeroshot")}
    for i, results in enumerate(test_sets.values()):
        for cls, _, m in _set_rows(results)[1:]:
            for model, grid in grids.items():
                if m[model].get("auc") is not None:
                    grid[i, columns.index(cls)] = m[model]["auc"]
    names = [f"{n} (trained on)" if n == trained_on else n for n in test_sets]
    write_generalisation_heatmap(assets / "generalisation.png", names, columns, grids["finetuned"], grids["zeroshot"])
    others = [n for n in test_sets if n != trained_on]
    return [
        "## Generalisation: trained on one dataset, tested on others",
        "",
        f"Trained on `{trained_on}`; tested on its own test split and on {', '.join(f'`{n}`' for n in others)} "
        "(`evaluate.test_on`). A test set's classes are matched to the detector's by name (after its "
        "`class_aliases`): a generator the detector was trained on is *seen*, any other *unseen* (detection only). "
        "Per generator, ROC-AUC, AP and TPR at 1% FPR are of its images against the same set's REAL images; the "
        "REAL row's flagged share is the false-positive rate at the threshold. 95% intervals: "
        "`metrics/test/<set>.json`.",
        "",
        generalisation_table(test_sets, trained_on),
        "",
        "![Generalisation heat map](assets/generalisation.png)",
        "",
    ]


def saliency_table(result: dict[str, Any]) -> str:
    """Border share of Grad-CAM mass per class, fine-tuned vs zero-shot."""
    shares = result["border_share"]
    ft, zs = shares.get("finetuned", {}), shares.get("zeroshot", {})
    rows = ["| class | fine-tuned | zero-shot |", "|---|---|---|"]
    rows += [f"| {'all' if name == 'all' else name} | {ft[name]:.3f} | {zs.get(name, float('nan')):.3f} |"
             for name in ft]
    rows.append(f"| uniform (looks everywhere) | {result['uniform_border_share']:.3f} | "
                f"{result['uniform_border_share']:.3f} |")
    return "\n".join(rows)


def _saliency_lines(result: dict[str, Any], grid: Path, assets: Path) -> list[str]:
    lines = [
        "## Where the models look (Grad-CAM)",
        "",
        "Grad-CAM on the patch tokens entering the image tower's last block, for each model's own decision "
        "(log-odds of fake vs REAL, or the reverse for an image called REAL): red is what pushed the model to its "
        "answer. Per class, the most confident correct images, then the most confident mistakes (detection); "
        "each as the image the model saw and its overlay.",
        "",
    ]
    if line := _copy_figure(grid, assets, "Saliency grid"):
        lines += [line, ""]
    pct = round(100 * result["border_fraction"], 1)
    lines += [
        f"Share of saliency mass in the border (the outer {pct:g}% of each side) over {result['n']:,} test images. "
        "A model that looks at the object scores below the uniform share; far above it means the border "
        "(framing, padding, resize edges) drives the decision: a shortcut.",
        "",
        saliency_table(result),
        "",
    ]
    return lines


def _data_lines(source: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    splits, dup = manifest["splits"], manifest["duplicates"]
    return [
        f"- Source: `{source.get('source')}` {source.get('id', '')} {source.get('version', '')}".rstrip(),
        f"- Downloaded: {', '.join(f'{k} {v:,}' for k, v in source.get('counts', {}).items())}",
        "- Used: " + "; ".join(
            f"{s} {info['count']:,} ({', '.join(f'{c} {n:,}' for c, n in info['per_class'].items())})"
            for s, info in splits.items()
        ),
        f"- Resolution {manifest['image_size']} px, {manifest['interpolation']}",
        f"- Exact duplicates: {dup.get('train_test_shared', 0)} shared by train and test "
        f"({dup.get('train_copies_of_test_dropped', 0)} train copies dropped); "
        f"{dup.get('within_train_dropped', 0)} within train and "
        f"{dup.get('within_test_dropped', 0)} within test dropped",
        f"- Skipped unreadable images: {len(manifest.get('skipped', []))}",
    ]


# The report's figures: key -> title. CURVES are shown in the Curves section, in this order.
FIGURES = {
    "train": "Training curves",
    "zeroshot": "Zero-shot: ROC, precision-recall, confusion",
    "eval": "Fine-tuned: ROC, precision-recall, confusion",
    "robustness": "Robustness",
    "attribution": "Attribution confusion",
    "reliability": "Reliability (test split)",
}
CURVES = ("train", "zeroshot", "eval")


def operating_point_lines(params: Params, finetuned: dict[str, Any], reliability: Path | None,
                          assets: Path) -> list[str]:
    """The decision threshold the fine-tuned model uses, how it was chosen, and the test FPR and TPR it gives;
    its calibration (temperature scaling) and the reliability diagram."""
    point = finetuned.get("operating_point", {})
    threshold, target = finetuned["threshold"], point.get("target_fpr")
    how = (f"chosen on the validation split for a false-positive budget of {target:g} "
           f"(`evaluate.target_fpr`)" if target is not None else "the fixed `evaluate.threshold`")
    ci = finetuned.get("ci95", {})

    def rate(key: str, flip: bool) -> str:
        value = 1 - finetuned[key] if flip else finetuned[key]
        if key not in ci:
            return f"{value:.4f}"
        lo, hi = ci[key]
        lo, hi = (1 - hi, 1 - lo) if flip else (lo, hi)
        return f"{value:.4f} [{lo:.4f}, {hi:.4f}]"

    lines = ["## Operating point and calibration", "",
             f"Decision threshold P(fake) >= {threshold:.4g}, {how}. On the test split it flags "
             f"{rate('accuracy_real', True)} of the real images (FPR) and catches {rate('accuracy_fake', False)} "
             f"of the fakes (TPR).", ""]
    if cal := point.get("calibration"):
        before, after = cal["val_before"], cal["val_after"]
        lines += [f"Calibration (`finetune.calibration: {cal['method']}`): temperature T = {point['temperature']:.4g}; "
                  f"on the validation split ECE {before['ece']:.4f} -> {after['ece']:.4f}, Brier "
                  f"{before['brier']:.4f} -> {after['brier']:.4f}, NLL {before['nll']:.4f} -> {after['nll']:.4f}. "
                  f"Test ECE and Brier, zero-shot vs fine-tuned, are in the table above.", ""]
    if reliability and (line := _copy_figure(reliability, assets, FIGURES["reliability"])):
        lines += [line, ""]
    return lines


def audit_lines(audits: dict[str, dict[str, Any]]) -> list[str]:
    """The shortcut audit: what file metadata alone (format, JPEG quality, size, ...) says of each label."""
    if not audits:
        return []
    lines = ["## Shortcut audit (file metadata only)", "",
             "| dataset | generator vs REAL | metadata ROC-AUC | top feature | flagged |", "|---|---|---|---|---|"]
    for name, result in audits.items():
        for g, row in result["generators"].items():
            auc = "n/a" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
            lines.append(f"| {name} | {g} | {auc} | {row.get('top_feature') or ''} | "
                         f"{'yes' if row.get('flagged') else 'no'} |")
    lines.append("")
    lines += [f"- **warning:** {w}" for result in audits.values() for w in result["warnings"]]
    return [*lines, ""]


def _copy_figure(src: Path, assets: Path, title: str) -> str | None:
    """Copy a figure into the report's assets; returns its Markdown image line, or None if it is missing."""
    if not src.is_file():
        return None
    dest = assets / f"{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}.png"
    shutil.copyfile(src, dest)
    return f"![{title}](assets/{dest.name})"


def build(
    out: Path,
    params: Params,
    zeroshot: dict[str, Any],
    finetuned: dict[str, Any],
    robustness: dict[str, dict[str, Any]],
    source: dict[str, Any],
    manifest: dict[str, Any],
    figures: dict[str, Path],
    mistakes: tuple[pd.DataFrame, np.ndarray],
    model: dict[str, str],
    saliency: tuple[dict[str, Any], Path] | None = None,
    test_sets: dict[str, dict[str, dict[str, Any]]] | None = None,
    audits: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write report.md, its PNGs and report.html into `out` (an empty folder).

    `figures` maps the keys of `FIGURES` to PNGs (a missing file is left out); `model` holds the MLflow run id and the
    registered model URI; `saliency` is metrics/saliency.json and the Grad-CAM grid PNG; `test_sets` maps
    `params.train_on` and each set of `evaluate.test_on` to its metrics/test/<name>.json (the Generalisation
    section, shown when there is a set besides the training one); `audits` maps datasets to their
    metrics/audit/<name>.json (the shortcut audit).
    """
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    threshold = finetuned["threshold"]  # the fine-tuned model's: saved with it, else evaluate.threshold
    shown = mistakes_grid(*mistakes, params.report.mistakes_shown, threshold, assets / "mistakes.png")
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure keys {unknown}; known: {sorted(FIGURES)}")
    robustness_figure, attribution_figure = figures.get("robustness"), figures.get("attribution")

    md = [
        "# aigi report: can CLIP tell AI-generated images from real ones?",
        "",
        f"Model `{params.model.arch}` (`{params.model.pretrained}` weights), fine-tuned with "
        f"`{params.finetune.method}`; decision threshold P(fake) >= {threshold}; "
        f"95% bootstrap intervals ({params.evaluate.bootstrap_samples} resamples, seed {params.seed}) in brackets.",
        "",
        "## Zero-shot vs fine-tuned (test split)",
        "",
        comparison_table(zeroshot, finetuned),
        "",
        *generator_sections(zeroshot, finetuned, attribution_figure, assets),
        *(generalisation_section(test_sets, params.train_on, assets)
          if test_sets and set(test_sets) - {params.train_on} else []),
        "## Data",
        "",
        *_data_lines(source, manifest),
        "",
        class_table(manifest),
        "",
        "## Curves",
        "",
    ]
    for key in CURVES:
        if key in figures and (line := _copy_figure(figures[key], assets, FIGURES[key])):
            md += [f"### {FIGURES[key]}", "", line, ""]
    md += operating_point_lines(params, finetuned, figures.get("reliability"), assets)
    md += audit_lines(audits or {})
    md += ["## Robustness (fine-tuned)", ""]
    if robustness:
        md += [
            "The original test images perturbed before the resize to the model's input: JPEG re-encoding at "
            "quality q (`jpeg_q`), Gaussian blur of standard deviation sigma in original pixels (`blur_sigma`), "
            "shrinking by a factor then enlarging back (`rescale_`).",
            "",
            robustness_table(finetuned, robustness),
            "",
        ]
        if robustness_figure and (line := _copy_figure(robustness_figure, assets, FIGURES["robustness"])):
            md += [line, ""]
    else:
        md += ["No perturbations configured (`evaluate.robustness`).", ""]
    if table := content_class_table(zeroshot, finetuned):
        md += [
            "## Accuracy per subject",
            "",
            "CIFAKE's file names end in a number in brackets (none = 1, then (2) ... (10)). It appears to follow "
            "CIFAR-10's class order (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck). "
            "This mapping is our observation; the dataset's authors do not document it.",
            "",
            table,
            "",
        ]
    if saliency:
        md += _saliency_lines(*saliency, assets)
    md += ["## Most confident mistakes (fine-tuned)", ""]
    if shown:
        images = "test image" if shown == 1 else "test images"
        md += [f"The {shown} {images} the fine-tuned model got wrong with the highest confidence "
               "(true class, subject where known, P(fake)).", "",
               "![most confident mistakes](assets/mistakes.png)", ""]
    else:
        md += ["No mistakes on the test split.", ""]
    md += ["## Model", "",
           f"- MLflow run: `{model.get('run_id', 'unknown')}`",
           f"- Registered model: `{model.get('uri', 'unknown')}`",
           "", "## Params", "", "```yaml", _params_yaml(params), "```", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(to_html(text, out))


def _params_yaml(params: Params) -> str:
    import yaml

    return yaml.safe_dump(json.loads(params.model_dump_json()), sort_keys=False).strip()


def to_html(markdown: str, base: Path) -> str:
    """The report's Markdown as one HTML page (CommonMark + tables, by markdown-it-py), every image
    inlined as a data: URI read from `base`, so the file stands alone."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML in the text is escaped

    def inline_image(tokens, idx, options, env):
        token = tokens[idx]
        data = base64.b64encode((base / str(token.attrGet("src"))).read_bytes()).decode()
        token.attrSet("src", f"data:image/png;base64,{data}")
        return default_image(tokens, idx, options, env)

    default_image = md.renderer.rules["image"]
    md.renderer.rules["image"] = inline_image
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             "img{max-width:100%}pre{background:#f5f5f5;padding:1em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>aigi report</title>"
            f"<style>{style}</style></head><body>\n" + md.render(markdown) + "</body></html>\n")
