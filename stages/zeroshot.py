"""Stage zeroshot: the pretrained CLIP with prompt ensembles per class, on the test split."""

from aigi import device, params
from aigi.errors import exits_cleanly
from aigi.evaluation import score_test_split
from aigi.model import create_detector
from aigi.paths import METRICS, PLOTS, PROCESSED


@exits_cleanly
def main() -> None:
    p = params.load()
    detector = create_detector(p.model.arch, p.model.pretrained, p.zeroshot.prompts, device.resolve(p.model.device),
                               seed=p.seed)
    result = score_test_split(detector, p, "zeroshot", p.zeroshot.batch_size, PROCESSED, METRICS / "zeroshot.json",
                              PLOTS / "zeroshot")
    print(f"zeroshot: accuracy={result['accuracy']:.4f} roc_auc={result['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
