"""Stage audit@<dataset>: can the dataset's labels be read off its files' metadata alone? (metrics/audit/<name>.json)

Runs after download, on the raw files (headers only), and never stops the pipeline: a leak is a
one-line warning naming the feature that carries it and the fix (`preprocess.jpeg_align`).
"""

import sys

from aigi import audit, params, paths
from aigi.errors import AigiError, exits_cleanly


@exits_cleanly
def main() -> None:
    if len(sys.argv) != 2:
        raise AigiError("usage: python stages/audit.py <dataset name in params.yaml datasets>")
    name = sys.argv[1]
    p = params.load()
    a = p.audit
    result = audit.audit(paths.raw_images(name), a.threshold, a.folds, a.max_images_per_class, p.seed)
    result["dataset"] = name
    audit.write_json(paths.audit_metrics(name), result)
    for g, row in result["generators"].items():
        if row["roc_auc"] is None:
            print(f"audit@{name}: {g} vs REAL: {row['note']}")
        else:
            print(f"audit@{name}: {g} vs REAL: metadata ROC-AUC {row['roc_auc']:.3f} "
                  f"(top feature {row['top_feature']}: {row['feature_auc'][row['top_feature']]:.3f})")
    for line in result["warnings"]:
        print(f"warning: {line}")


if __name__ == "__main__":
    main()
