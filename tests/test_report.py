"""The report: every section a reviewer needs, and an HTML file with every image inlined."""

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aigi import metrics, report
from aigi.params import Params


def _inputs(tmp_path, n: int = 60):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], n // 2)
    files = [f"test/{'FAKE' if label else 'REAL'}/{i} ({i % 10 + 1}).jpg" for i, label in enumerate(y)]
    p_ft = np.clip(0.2 + 0.6 * y + rng.normal(0, 0.2, n), 0, 1)
    p_zs = rng.uniform(0, 1, n)
    ft = metrics.evaluate(y, p_ft, 0.5, 50, 0, files=files)
    zs = metrics.evaluate(y, p_zs, 0.5, 50, 0, files=files)
    robust = {"jpeg_q50": {"kind": "jpeg", "level": 50, **metrics.evaluate(y, p_zs, 0.5, 50, 0)}}
    figure = tmp_path / "fig.png"
    Image.new("RGB", (20, 10), "red").save(figure)
    predictions = pd.DataFrame({"index": range(n), "file": files, "label": y, "p_fake": p_ft})
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    source = {"source": "synthetic", "id": "aigi-synthetic", "counts": {"test/REAL": n // 2, "test/FAKE": n // 2}}
    manifest = {"splits": {"test": {"count": n, "per_class": {"REAL": n // 2, "FAKE": n // 2}}}, "image_size": 64,
                "interpolation": "bicubic", "duplicates": {"train_test_shared": 2}, "skipped": []}
    return dict(zeroshot=zs, finetuned=ft, robustness=robust, source=source, manifest=manifest,
                figures={"train": figure, "robustness": figure, "reliability": tmp_path / "none.png"},
                mistakes=(predictions, images), model={"run_id": "abc123", "uri": "models:/m@newest"})


def test_report_has_every_section_and_is_self_contained(tmp_path):
    out = tmp_path / "reports"
    report.build(out, Params(), **_inputs(tmp_path))
    md = (out / "report.md").read_text()
    headings = re.findall(r"^## (.*)$", md, flags=re.M)
    assert headings == ["Zero-shot vs fine-tuned (test split)", "Data", "Curves", "Operating point and calibration",
                        "Robustness (fine-tuned)", "Accuracy per subject", "Most confident mistakes (fine-tuned)",
                        "Model", "Params"]
    cell = r"\d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\]"
    assert re.search(rf"\| accuracy \| {cell} \| {cell} \|", md)
    assert "| jpeg_q50 |" in md and "| clean |" in md
    c_zs, c_ft = (_inputs(tmp_path)[k]["confusion"] for k in ("zeroshot", "finetuned"))
    assert (f"| confusion (FAKE positive) | TN {c_zs['tn']} · FP {c_zs['fp']} · FN {c_zs['fn']} · TP {c_zs['tp']} "
            f"| TN {c_ft['tn']} · FP {c_ft['fp']} · FN {c_ft['fn']} · TP {c_ft['tp']} |") in md
    assert "| cat | " in md and "not document" in md
    assert "2 shared by train and test" in md and "`models:/m@newest`" in md and "bootstrap_samples: 1000" in md
    assert "Reliability (test split)" not in md  # a figure that does not exist is left out, not linked
    assert re.search(r"Decision threshold P\(fake\) >= 0\.5, the fixed `evaluate.threshold`. On the test split it "
                     r"flags \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] of the real images \(FPR\)", md)
    for link in re.findall(r"\]\((assets/[^)]+)\)", md):
        assert (out / link).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("![")
    assert not re.search(r"<img[^>]+src=\"(?!data:)", html)
    assert "<table>" in html and "<h2>Accuracy per subject</h2>" in html


def test_mistakes_follow_the_threshold_and_confidence(tmp_path):
    predictions = pd.DataFrame({"index": range(4), "label": [0, 0, 1, 1], "p_fake": [0.95, 0.35, 0.1, 0.45],
                                "file": ["0.jpg", "1 (2).jpg", "2 (3).jpg", "3.jpg"]})
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    assert report.mistakes_grid(predictions, images, 10, 0.5, tmp_path / "a.png") == 3  # 0.95, 0.1, 0.45
    assert report.mistakes_grid(predictions, images, 10, 0.3, tmp_path / "b.png") == 3  # 0.95, 0.35, 0.1
    assert report.mistakes_grid(predictions, images, 10, 0.05, tmp_path / "c.png") == 2  # 0.95, 0.35
    assert report.mistakes_grid(predictions.iloc[[0, 1]], images, 10, 0.99, tmp_path / "d.png") == 0


def test_several_generators_add_classes_attribution_per_generator_and_unseen(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["REAL", "DCGAN", "SD14", "VAE"]
    labels = np.r_[np.repeat(np.arange(4), 20), np.full(10, -1)]
    names = np.r_[np.array(classes, dtype=object)[labels[:80]], np.full(10, "GLIDE", dtype=object)]
    probs = rng.dirichlet(np.ones(4), 90)
    probs[np.arange(80), labels[:80]] += 0.6
    probs /= probs.sum(axis=1, keepdims=True)
    ft = metrics.evaluate_classes(classes, labels, names, probs, 0.5, 50, 0)
    zs = metrics.evaluate_classes(classes, labels, names, rng.dirichlet(np.ones(4), 90), 0.5, 50, 0)
    inputs = _inputs(tmp_path)
    figure = inputs["figures"]["train"]
    per_class = {**{c: 20 for c in classes}, "GLIDE": 10}
    inputs.update(zeroshot=zs, finetuned=ft, robustness={}, figures={"attribution": figure},
                  manifest={**inputs["manifest"], "classes": classes, "display_names": {"SD14": "Stable Diffusion 1.4"},
                            "unseen_generators": ["GLIDE"], "splits": {"test": {"count": 90, "per_class": per_class}}})
    inputs["mistakes"] = (pd.DataFrame({"index": range(90), "file": [f"{i}.jpg" for i in range(90)], "label": labels,
                                        "label_name": names, "p_fake": 1 - probs[:, 0]}),
                          rng.integers(0, 256, (90, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "reports"
    report.build(out, Params(), **inputs)
    md = (out / "report.md").read_text()
    headings = re.findall(r"^## (.*)$", md, flags=re.M)
    assert headings[1:4] == ["Attribution: which generator made it (test split)",
                             "Detection per generator (fine-tuned)",
                             "Unseen generators (held out of training; fine-tuned)"]
    cell = r"\d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\]"
    assert re.search(rf"\| macro_f1 \| {cell} \| {cell} \|", md)
    assert re.search(rf"\| SD14 \| 20 \| {cell} \| {cell} \| \d\.\d{{4}} \|", md)  # n, flagged, AUC, recall
    assert re.search(rf"\| GLIDE \| 10 \| {cell} \| {cell} \|\n", md)
    assert "| SD14 | Stable Diffusion 1.4 | 20 | generator |" in md
    assert "| GLIDE | GLIDE | 10 | unseen generator (test only) |" in md
    assert f"| REAL | {' | '.join(str(ft['attribution']['confusion']['REAL'][c]) for c in classes)} |" in md
    assert "![Attribution confusion](assets/attribution-confusion.png)" in md


def test_html_lists_tables_and_code_are_well_formed(tmp_path):
    from aigi.report import to_html

    out = to_html("# T\n\n- one `x<y`\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```yaml\nk: <v>\n```\n", tmp_path)
    assert "<ul>\n<li>one <code>x&lt;y</code></li>\n<li>two</li>\n</ul>" in out
    assert out.count("<li>") == out.count("</li>") == 2 and out.index("<ul>") < out.index("<li>")
    assert "<table>" in out and "<td>1</td>" in out and "k: &lt;v&gt;" in out


def test_report_embeds_the_saliency_grid_and_border_share(tmp_path):
    grid = tmp_path / "grid.png"
    Image.new("RGB", (40, 20), "blue").save(grid)
    result = {"border_fraction": 0.125, "uniform_border_share": 0.4375, "n": 400,
              "border_share": {"finetuned": {"all": 0.61, "REAL": 0.3, "FAKE": 0.9},
                               "zeroshot": {"all": 0.44, "REAL": 0.43, "FAKE": 0.45}}}
    out = tmp_path / "reports"
    report.build(out, Params(), **_inputs(tmp_path), saliency=(result, grid))
    md = (out / "report.md").read_text()
    assert "## Where the models look (Grad-CAM)" in md
    assert "![Saliency grid](assets/saliency-grid.png)" in md and (out / "assets" / "saliency-grid.png").is_file()
    assert "| FAKE | 0.900 | 0.450 |" in md and "| uniform (looks everywhere) | 0.438 | 0.438 |" in md
    assert "outer 12.5% of each side" in md and "400 test images" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count("![")


def test_generalisation_section_shows_each_test_set_and_generator(tmp_path):
    """Rows: test set x class (REAL, all fakes, seen, unseen); zero-shot vs fine-tuned; a heat map, inlined."""
    rng = np.random.default_rng(1)
    inputs = _inputs(tmp_path)
    names = np.array(["REAL"] * 30 + ["FAKE"] * 20 + ["DCGAN"] * 20, dtype=object)
    labels = np.array([0] * 30 + [1] * 20 + [-1] * 20)  # the detector knows FAKE; DCGAN is unseen
    def scored(shift):
        p = np.clip(0.3 + shift * (names != "REAL") + rng.normal(0, 0.2, len(names)), 0, 1)
        return metrics.evaluate_classes(["REAL", "FAKE"], labels, names, np.stack([1 - p, p], axis=1), 0.5, 20, 0,
                                        include_unseen=True)
    test_sets = {"cifake": {"finetuned": inputs["finetuned"], "zeroshot": inputs["zeroshot"]},
                 "multigen": {"finetuned": scored(0.5), "zeroshot": scored(0.0)}}
    out = tmp_path / "reports"
    report.build(out, Params(datasets={"cifake": {}, "multigen": {}}, evaluate={"test_on": ["multigen"]}), **inputs,
                 test_sets=test_sets)
    md = (out / "report.md").read_text()
    headings = re.findall(r"^## (.*)$", md, flags=re.M)
    assert headings[1] == "Generalisation: trained on one dataset, tested on others"
    num = r"(\d\.\d{3}|–)"
    assert re.search(r"\| cifake \(trained on\) \| REAL \(false positives\) \| 30 \| – \| – \| – \| – \| – \| – "
                     rf"\| {num} \| {num} \|", md)
    assert re.search(rf"\| cifake \(trained on\) \| all fakes \| 30 \|( {num} \|){{8}}\n", md)
    assert re.search(rf"\| multigen \| FAKE \(seen\) \| 20 \|( {num} \|){{8}}\n", md)
    dcgan = re.search(rf"\| multigen \| DCGAN \(unseen\) \| 20 \|( {num} \|){{8}}\n", md)
    ft_auc = test_sets["multigen"]["finetuned"]["unseen"]["DCGAN"]["roc_auc"]
    assert dcgan and f" {ft_auc:.3f} |" in dcgan.group(0)
    assert "![Generalisation heat map](assets/generalisation.png)" in md
    assert (out / "assets" / "generalisation.png").is_file()
    html = (out / "report.html").read_text()
    assert "<h2>Generalisation: trained on one dataset, tested on others</h2>" in html
    assert html.count("data:image/png;base64,") == md.count("![")
    # Without a set besides the training one there is no section (the default run's report is unchanged).
    report.build(tmp_path / "plain", Params(), **_inputs(tmp_path), test_sets={"cifake": test_sets["cifake"]})
    assert "Generalisation" not in (tmp_path / "plain" / "report.md").read_text()


def test_operating_point_calibration_and_audit_sections(tmp_path):
    inputs = _inputs(tmp_path)
    ft = inputs["finetuned"]
    ft["threshold"] = 0.8123
    ft["operating_point"] = {"target_fpr": 0.01, "temperature": 1.7, "calibration": {
        "method": "temperature", "val_before": {"ece": 0.2, "brier": 0.15, "nll": 0.6},
        "val_after": {"ece": 0.05, "brier": 0.12, "nll": 0.4}}}
    inputs["figures"]["reliability"] = inputs["figures"]["train"]
    audit = {"generators": {"FAKE": {"roc_auc": 0.99, "top_feature": "format", "flagged": True}},
             "warnings": ["FAKE vs REAL: metadata alone reaches ROC-AUC 0.990 (format); set preprocess.jpeg_align"]}
    out = tmp_path / "reports"
    report.build(out, Params(), **inputs, audits={"cifake": audit})
    md = (out / "report.md").read_text()
    assert "Decision threshold P(fake) >= 0.8123, chosen on the validation split for a false-positive budget of " \
           "0.01 (`evaluate.target_fpr`)" in md
    assert "temperature T = 1.7; on the validation split ECE 0.2000 -> 0.0500, Brier 0.1500 -> 0.1200" in md
    assert "![Reliability (test split)]" in md
    assert "| cifake | FAKE | 0.990 | format | yes |" in md and "- **warning:** FAKE vs REAL" in md
    with pytest.raises(ValueError, match="unknown figure keys"):
        report.build(tmp_path / "r2", Params(), **{**inputs, "figures": {"Robustness": inputs["figures"]["train"]}})
