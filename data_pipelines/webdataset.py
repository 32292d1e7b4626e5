"""Convert WebDataset tar shards (img2dataset / video2dataset output, e.g. LAION, WebVid) to records.

    python -m data_pipelines.webdataset --shards '/data/laion/{00000..00099}.tar' --out /data/records/laion \
        --name laion400m --split train

A sample is the run of tar members sharing a key (the member path up to the first dot of its file
name). Members by extension: jpg / jpeg / png / webp -> image; mp4 / webm / avi / mkv / mov / gif ->
video; wav / flac / mp3 / ogg / m4a -> audio; txt / caption -> caption, else json's "caption" or "text".
Unreadable samples are skipped and counted; a truncated or unreadable shard counts its remaining
samples as one skip and conversion goes on with the next shard; past --max_skip_fraction it aborts.
"""
from __future__ import annotations

import argparse
import glob
import json
import re
import tarfile
from typing import Iterator

from codi_jax.data import records
from data_pipelines import ingest

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov", "gif")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "m4a")
CAPTION_EXTENSIONS = ("txt", "caption")


def expand_shards(patterns) -> list[str]:
    """Shard paths from globs and brace ranges ('{00000..00009}', as WebDataset writes them)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    out = []
    for pattern in patterns:
        match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
        if match:
            width = len(match.group(1))
            for number in range(int(match.group(1)), int(match.group(2)) + 1):
                out += expand_shards(pattern[:match.start()] + str(number).zfill(width) + pattern[match.end():])
        else:
            found = sorted(glob.glob(pattern))
            if not found:
                raise ValueError(f"no shard matches {pattern!r}")
            out += found
    return out


def _split_member(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def iterate_samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one tar shard, in order. Raises tarfile.TarError / OSError
    where the shard is truncated or unreadable (after yielding the samples before that point)."""
    with tarfile.open(shard, "r|*") as archive:
        key, members = None, {}
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = _split_member(member.name)
            if key is not None and member_key != key:
                yield key, members
                members = {}
            key = member_key
            members[extension] = archive.extractfile(member).read()
        if key is not None:
            yield key, members


def _caption(members: dict[str, bytes]) -> str:
    for extension in CAPTION_EXTENSIONS:
        if extension in members:
            return members[extension].decode("utf-8", errors="replace").strip()
    if "json" in members:
        meta = json.loads(members["json"])
        for field in ("caption", "text", "name"):
            if isinstance(meta.get(field), str):
                return meta[field].strip()
    return ""


def _pick(members: dict[str, bytes], extensions) -> tuple[bytes | None, str]:
    for extension in extensions:
        if extension in members:
            return members[extension], "." + extension
    return None, ""


def sample_to_record(key: str, members: dict[str, bytes], options: ingest.ConvertOptions) -> dict:
    image, _ = _pick(members, IMAGE_EXTENSIONS)
    video, video_suffix = _pick(members, VIDEO_EXTENSIONS)
    audio, audio_suffix = _pick(members, AUDIO_EXTENSIONS)
    if image is None and video is None and audio is None:
        raise ValueError(f"no image, video or audio member (members: {sorted(members)})")
    return ingest.build_record(key, options, image=image, video=video, audio=audio, caption=_caption(members),
                               suffixes={"video": video_suffix, "audio": audio_suffix})


def convert_webdataset(shards, out_dir, *, name: str, split: str = "train",
                       options: ingest.ConvertOptions | None = None, examples_per_shard: int = 1000) -> dict:
    """Write one split from tar shards; returns {"written", "skipped", "errors", "path"}."""
    options = options or ingest.ConvertOptions()
    paths = expand_shards(shards)
    counter = ingest.SkipCounter(options, f"{len(paths)} shards")
    with records.RecordWriter(out_dir, name, split, examples_per_shard) as writer:
        for shard in paths:
            try:
                for key, members in iterate_samples(shard):
                    try:
                        record = sample_to_record(f"{shard}:{key}", members, options)
                    except (ValueError, KeyError) as error:
                        counter.skip(key, error)
                    else:
                        writer.write(record)
                        counter.ok()
            except (tarfile.TarError, OSError, EOFError) as error:
                counter.skip(shard, ValueError(f"truncated or unreadable shard, rest skipped "
                                               f"({type(error).__name__}: {error})"))
        counter.check()
    return {**counter.summary(), "path": str(writer.data_dir)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.webdataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, nargs="+", help="tar paths, globs or brace ranges")
    parser.add_argument("--out", required=True, help="dataset directory (several splits may share it)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--split", default="train")
    ingest.add_option_flags(parser)
    args = parser.parse_args(argv)
    result = convert_webdataset(args.shards, args.out, name=args.name, split=args.split,
                                options=ingest.options_from_flags(args))
    ingest.print_summary(result, args.split)


if __name__ == "__main__":
    main()
