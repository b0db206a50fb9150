"""Stage download@<dataset>: fetch `datasets.<dataset>` (per its `source`) into data/raw/<dataset>/ with SOURCE.json."""

import sys

from aigi import params
from aigi.data.sources import download
from aigi.errors import exits_cleanly
from aigi.paths import raw_dir


@exits_cleanly
def main() -> None:
    p = params.load()
    name = sys.argv[1] if len(sys.argv) > 1 else p.train_on
    info = download(p.dataset(name), p.seed, raw_dir(name))
    print(f"download@{name}: {info['source']} {info.get('id', '')}: {info['counts']}")


if __name__ == "__main__":
    main()
