"""Stage preprocess@<dataset>: dedupe, subsample per class, split and resize to the model's input
(data/processed/<dataset>/). The `train_on` dataset gets train, val and test; any other is a test set: test only."""

import sys

from aigi import params
from aigi.data import preprocess
from aigi.errors import exits_cleanly
from aigi.model import input_size
from aigi.paths import processed_dir, raw_images


@exits_cleanly
def main() -> None:
    p = params.load()
    name = sys.argv[1] if len(sys.argv) > 1 else p.train_on
    role = "train" if name == p.train_on else "test"
    manifest = preprocess.run(raw_images(name), processed_dir(name), p.preprocess, p.seed, input_size(p.model.arch),
                              dataset=name, role=role, class_aliases=p.dataset(name).class_aliases,
                              unseen=p.evaluate.unseen_generators if role == "train" else ())
    print(f"preprocess@{name} ({role}): classes {manifest['classes']}; unseen generators "
          f"{manifest['unseen_generators']}; aliases {manifest['class_aliases']}")
    for split, info in manifest["splits"].items():
        print(f"preprocess@{name}: {split}: {info['per_class']} ({info['skipped']} skipped)")
    dup = manifest["duplicates"]
    print(f"preprocess@{name}: duplicates dropped: {dup.get('within_train_dropped', 0)} in train, "
          f"{dup['within_test_dropped']} in test, {dup['train_copies_of_test_dropped']} train copies of test "
          f"({dup['train_test_shared']} shared)")
    print(f"preprocess@{name}: ignored {manifest['ignored_non_image_files']} non-image files; details in manifest.json")


if __name__ == "__main__":
    main()
