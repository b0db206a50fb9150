"""Stage download: fetch CIFAKE (per `data.source`) into data/raw/ with SOURCE.json."""

from aigi import params
from aigi.data.sources import download
from aigi.errors import exits_cleanly
from aigi.paths import RAW


@exits_cleanly
def main() -> None:
    p = params.load()
    info = download(p.data, p.seed, RAW)
    print(f"download: {info['source']} {info.get('id', '')}: {info['counts']}")


if __name__ == "__main__":
    main()
