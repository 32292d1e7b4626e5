"""Input pipeline throughput on one CPU core: examples/s of each objective's pipeline and of a mixture.

    python benchmarks/bench_data.py [--resolution 64] [--batch 32] [--batches 8]

Pins the process to one core, reads without threads (ReadOptions num_threads 0), and times `--batches`
batches after one warm-up batch, for the on-the-fly Shapes & Tones source and for the same examples
stored as records (PNG frames, float audio) in a temporary directory. Text is tokenized for clip, bert
and gpt2. Scale-out on a host comes from `worker_count` (grain processes), roughly linear in cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from codi_jax.data import pipeline, records

OBJECTIVES = ("text_image", "text_audio", "text_video", "audio_video")


def _config(objectives, resolution: int, path: str | None):
    config = pipeline.default_config(objectives, resolution=resolution, text_encoders=("clip", "bert", "gpt2"),
                                     split="test")
    config.read_threads = 0
    if path:
        for objective in config.objectives.values():
            objective.dataset, objective.path = "records", path
    return config


def _rate(config, batch: int, batches: int) -> float:
    it = pipeline.make_dataset(config, global_batch_size=batch, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    examples = args.batch * (args.batches + 1)
    with tempfile.TemporaryDirectory() as folder:
        with records.RecordWriter(folder, "shapes_tones", "test") as writer:
            for index in range(examples):
                writer.write(records.shapes_tones_record("test", index, args.resolution))
        rows = []
        for name, objectives in [(o, (o,)) for o in OBJECTIVES] + [("mixture (all four, equal)", OBJECTIVES)]:
            generated = _rate(_config(objectives, args.resolution, None), args.batch, args.batches)
            stored = _rate(_config(objectives, args.resolution, folder), args.batch, args.batches)
            rows.append((name, generated, stored))

    print(f"one core, R={args.resolution}, batch {args.batch}, {args.batches} timed batches")
    print(f"| {'pipeline':<26} | {'on the fly ex/s':>15} | {'records ex/s':>12} |")
    print(f"|{'-' * 28}|{'-' * 17}|{'-' * 14}|")
    for name, generated, stored in rows:
        print(f"| {name:<26} | {generated:>15.0f} | {stored:>12.0f} |")


if __name__ == "__main__":
    main()
