"""Spark local mode against `aigi predict` on the same image files: images/s, and Spark's cost per partition.

    unzip -q ../shared/data/cifake-sample/cifake-sample.zip -d /tmp/cifake-sample   # 20,000 32×32 JPEGs
    python bench/spark.py /tmp/cifake-sample --master 'local[2]' --partitions 2,16

Saves a detector with random weights (`--arch`, default aigi-tiny: the speed does not depend on the
weights) and its pyfunc model, then times on the same files: `predict_paths` in this process (what
`aigi predict` runs, one process), and for each partition count the whole Spark job of
`aigi predict --spark` (binaryFile listing and read, the pandas UDF, Parquet written), the Spark session
already started (its start-up is printed apart). The overhead per partition is the slope of the job's
time between the smallest and the largest partition count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from aigi import serving
from aigi import spark as aigi_spark
from aigi.model import create_detector, load_detector, save_detector
from aigi.predict import expand, predict_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", help="a folder of images (searched recursively)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--partitions", default="2,16,0", help="comma-separated partition counts to time; 0: Spark's "
                    "own split of the files (no repartition)")
    ap.add_argument("--arch", default="aigi-tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    counts = sorted(int(n) for n in args.partitions.split(","))
    print(f"bench/spark: load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
        save_detector(create_detector(args.arch, "none", prompts, torch.device("cpu"), seed=0), tmp / "model",
                      {"arch": args.arch, "pretrained": "none", "method": "contrastive", "prompts": prompts})
        uri = serving.save_pyfunc(tmp / "model", tmp / "pyfunc", 0.5).as_uri()

        files = expand([args.images])
        detector, _ = load_detector(tmp / "model", torch.device("cpu"))
        list(predict_paths(detector, files[: args.batch_size], args.batch_size))  # warm-up
        start = time.perf_counter()
        rows = list(predict_paths(detector, files, args.batch_size))
        local_s = time.perf_counter() - start
        print(f"  aigi predict (one process, {torch.get_num_threads()} threads): {len(rows)} files in {local_s:.1f} s, "
              f"{len(rows) / local_s:.0f} images/s", flush=True)

        start = time.perf_counter()
        spark = aigi_spark.session(args.master, "aigi-bench")
        print(f"  Spark session on {args.master} started in {time.perf_counter() - start:.1f} s", flush=True)
        timings = {}
        try:
            for n in counts:
                out = tmp / f"out-{n}.parquet"
                start = time.perf_counter()
                frame = aigi_spark.score(spark, uri, [args.images], None, n or None)
                scored, failed = aigi_spark.write_parquet(frame, str(out))
                timings[n] = time.perf_counter() - start
                parts = n or aigi_spark.image_files(spark, [args.images]).rdd.getNumPartitions()
                how = "" if n else " (its own split)"
                print(f"  Spark, {parts} partitions{how}: {scored} files ({failed} unreadable) in {timings[n]:.1f} s, "
                      f"{scored / timings[n]:.0f} images/s", flush=True)
        finally:
            spark.stop()
    explicit = [n for n in counts if n]
    if len(explicit) > 1:
        lo, hi = explicit[0], explicit[-1]
        per = (timings[hi] - timings[lo]) / (hi - lo)
        print(f"  overhead per partition (slope {lo}->{hi}): {per:.2f} s")
    print(f"  load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
