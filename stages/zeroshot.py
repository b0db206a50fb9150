"""Stage zeroshot: the pretrained CLIP with prompt ensembles per class, on the `train_on` dataset's test split."""

from aigi import device, params
from aigi.data.store import load_manifest
from aigi.errors import exits_cleanly
from aigi.evaluation import score_test_split
from aigi.model import zeroshot_detector
from aigi.paths import ZEROSHOT_METRICS, ZEROSHOT_PLOTS, processed_dir


@exits_cleanly
def main() -> None:
    p = params.load()
    processed = processed_dir(p.train_on)
    detector, _ = zeroshot_detector(load_manifest(processed), p.model, p.zeroshot, device.resolve(p.model.device),
                                    p.seed)
    result = score_test_split(detector, p, "zeroshot", p.zeroshot.batch_size, processed, ZEROSHOT_METRICS,
                              ZEROSHOT_PLOTS)
    attribution = f" attribution_accuracy={a['accuracy']:.4f}" if (a := result.get("attribution")) else ""
    print(f"zeroshot: accuracy={result['accuracy']:.4f} roc_auc={result['roc_auc']:.4f}{attribution}")


if __name__ == "__main__":
    main()
