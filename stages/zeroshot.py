"""Stage zeroshot: the pretrained CLIP with prompt ensembles per class, on the test split."""

import json

from aigi import device, params
from aigi.classes import manifest_prompts
from aigi.errors import exits_cleanly
from aigi.evaluation import score_test_split
from aigi.model import create_detector
from aigi.paths import METRICS, PLOTS, PROCESSED


@exits_cleanly
def main() -> None:
    p = params.load()
    prompts = manifest_prompts(json.loads((PROCESSED / "manifest.json").read_text()), p.zeroshot)
    detector = create_detector(p.model.arch, p.model.pretrained, prompts, device.resolve(p.model.device), seed=p.seed)
    result = score_test_split(detector, p, "zeroshot", p.zeroshot.batch_size, PROCESSED, METRICS / "zeroshot.json",
                              PLOTS / "zeroshot")
    attribution = f" attribution_accuracy={a['accuracy']:.4f}" if (a := result.get("attribution")) else ""
    print(f"zeroshot: accuracy={result['accuracy']:.4f} roc_auc={result['roc_auc']:.4f}{attribution}")


if __name__ == "__main__":
    main()
