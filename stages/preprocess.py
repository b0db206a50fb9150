"""Stage preprocess: dedupe, subsample, split and upsample to the model's resolution (data/processed/)."""

from aigi import params
from aigi.data import preprocess
from aigi.errors import exits_cleanly
from aigi.model import input_size
from aigi.paths import PROCESSED, RAW_CIFAKE


@exits_cleanly
def main() -> None:
    p = params.load()
    manifest = preprocess.run(RAW_CIFAKE, PROCESSED, p.preprocess, p.seed, input_size(p.model.arch))
    for split, info in manifest["splits"].items():
        print(f"preprocess: {split}: {info['per_class']} ({info['skipped']} skipped)")
    print(f"preprocess: duplicates: {manifest['duplicates']['train_test_shared']} shared by train and test")


if __name__ == "__main__":
    main()
