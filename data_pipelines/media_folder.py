"""Convert a folder of media files plus a captions table (CSV with a header, or JSONL) to records.

    python -m data_pipelines.media_folder --captions audiocaps_train.csv --media_root /data/audiocaps \
        --out /data/records/audiocaps --name audiocaps --split train --audio_column audio

Each row names its media by path relative to --media_root, one column per modality present
(--image_column / --video_column / --audio_column; leave a flag out when the dataset lacks the
modality), and its caption (--caption_column, default "caption"). Rows whose media are missing or
unreadable are skipped and counted; past --max_skip_fraction the conversion aborts and its partial
shards are removed.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
from typing import Iterator

from codi_jax.data import records
from data_pipelines import ingest


def read_table(path) -> Iterator[dict]:
    """Rows of a CSV (with header) or JSONL captions file as dicts."""
    path = pathlib.Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        with path.open() as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: not a JSON object ({error})") from error
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="") as handle:
            yield from csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    else:
        raise ValueError(f"{path}: captions file must be .csv, .tsv or .jsonl")


def convert_folder(captions, media_root, out_dir, *, name: str, split: str = "train",
                   caption_column: str = "caption", image_column: str | None = None,
                   video_column: str | None = None, audio_column: str | None = None, id_column: str | None = None,
                   options: ingest.ConvertOptions | None = None, examples_per_shard: int = 1000) -> dict:
    """Write one split; returns {"written", "skipped", "errors", "path"}."""
    options = options or ingest.ConvertOptions()
    if not (image_column or video_column or audio_column):
        raise ValueError("name at least one media column (image_column, video_column or audio_column)")
    media_root = pathlib.Path(media_root)
    counter = ingest.SkipCounter(options, str(captions))
    with records.RecordWriter(out_dir, name, split, examples_per_shard) as writer:
        for number, row in enumerate(read_table(captions)):
            key = str(row[id_column]) if id_column else str(number)
            if caption_column not in row:
                raise ValueError(f"{captions}: row {number} has no column {caption_column!r}; "
                                 f"columns are {sorted(row)}")
            paths = {m: media_root / str(row[c]) for m, c in (("image", image_column), ("video", video_column),
                                                             ("audio", audio_column)) if c}
            try:
                writer.write(ingest.build_record(key, options, caption=str(row[caption_column]), **paths))
            except (ValueError, KeyError) as error:
                counter.skip(key, error)
            else:
                counter.ok()
        counter.check()
    return {**counter.summary(), "path": str(writer.data_dir)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.media_folder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", required=True, help="CSV / TSV with a header, or JSONL")
    parser.add_argument("--media_root", required=True)
    parser.add_argument("--out", required=True, help="dataset directory (several splits may share it)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--image_column")
    parser.add_argument("--video_column")
    parser.add_argument("--audio_column")
    parser.add_argument("--id_column")
    ingest.add_option_flags(parser)
    args = parser.parse_args(argv)
    result = convert_folder(args.captions, args.media_root, args.out, name=args.name, split=args.split,
                            caption_column=args.caption_column, image_column=args.image_column,
                            video_column=args.video_column, audio_column=args.audio_column,
                            id_column=args.id_column, options=ingest.options_from_flags(args))
    ingest.print_summary(result, args.split)


if __name__ == "__main__":
    main()
