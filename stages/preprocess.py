"""Stage preprocess: dedupe, subsample per class, split and resize to the model's input (data/processed/)."""

from aigi import params
from aigi.data import preprocess
from aigi.errors import exits_cleanly
from aigi.model import input_size
from aigi.paths import PROCESSED, RAW_IMAGES


@exits_cleanly
def main() -> None:
    p = params.load()
    manifest = preprocess.run(RAW_IMAGES, PROCESSED, p.preprocess, p.seed, input_size(p.model.arch),
                              p.evaluate.unseen_generators)
    print(f"preprocess: classes {manifest['classes']}; unseen generators {manifest['unseen_generators']}")
    for split, info in manifest["splits"].items():
        print(f"preprocess: {split}: {info['per_class']} ({info['skipped']} skipped)")
    dup = manifest["duplicates"]
    print(f"preprocess: duplicates dropped: {dup['within_train_dropped']} in train, {dup['within_test_dropped']} in "
          f"test, {dup['train_copies_of_test_dropped']} train copies of test ({dup['train_test_shared']} shared)")
    print(f"preprocess: ignored {manifest['ignored_non_image_files']} non-image files; details in manifest.json")


if __name__ == "__main__":
    main()
