"""The one record schema every paired dataset is stored in (ArrayRecord files of tf.Example protos, laid
out as a TFDS dataset directory), plus its writer and reader.

Fields (a modality a dataset lacks is empty, an unknown attribute is -1):
  id                 str    unique within the dataset
  image              bytes  one encoded image (PNG / JPEG / WEBP)
  video              [T]    bytes, one encoded image per frame, uniformly spaced in time
  video_fps          float  frame rate of the stored frames (0 without video)
  audio              [N]    float32 mono waveform in [-1, 1]
  audio_sample_rate  int    Hz (0 without audio)
  caption            str
  color, shape, motion, onset  int  Shapes & Tones attribute indices (COLORS / SHAPES / MOTIONS / onset frame)

A directory written here (or by the Shapes & Tones TFDS builder) reads back with
`tfds.builder_from_directory(dir).as_data_source(split)` as well as with `RecordSource(dir, split)`.
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
from typing import Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from codi_jax.data import media
from codi_jax.data import shapes_tones as st

UNKNOWN = -1
VERSION = "1.0.0"
FILE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
ATTRIBUTES = st.ATTRIBUTES

FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
    "video": tfds.features.Tensor(shape=(None,), dtype=np.object_),
    "video_fps": tfds.features.Scalar(dtype=np.float32),
    "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    "audio_sample_rate": tfds.features.Scalar(dtype=np.int32),
    "caption": tfds.features.Text(),
    **{name: tfds.features.Scalar(dtype=np.int32) for name in ATTRIBUTES},
})


class CorruptRecordError(ValueError):
    """A stored record or its media cannot be decoded."""


def make_record(example_id: str, *, image: bytes = b"", video: Iterable[bytes] = (), video_fps: float = 0.0,
                audio=None, audio_sample_rate: int = 0, caption: str = "",
                attributes: Mapping[str, int] | None = None) -> dict:
    """A record dict in the schema; everything but the id is optional."""
    audio = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio: expected a mono wave [N], got shape {audio.shape}")
    if audio.size and audio_sample_rate <= 0:
        raise ValueError(f"audio_sample_rate must be positive when audio is given, got {audio_sample_rate}")
    attributes = dict(attributes or {})
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    return {"id": str(example_id), "image": bytes(image), "video": list(video), "video_fps": float(video_fps),
            "audio": audio, "audio_sample_rate": int(audio_sample_rate), "caption": caption,
            **{name: int(attributes.get(name, UNKNOWN)) for name in ATTRIBUTES}}


def shapes_tones_record(split: str, index: int, resolution: int = st.DEFAULT_RESOLUTION) -> dict:
    """Example (split, index) of Shapes & Tones as a record (PNG image and frames, float audio)."""
    example = st.generate(split, index, resolution)
    return make_record(f"{split}-{index}", image=media.encode_image(example["image"]),
                       video=[media.encode_image(frame) for frame in example["video"]], video_fps=st.VIDEO_FPS,
                       audio=example["audio"], audio_sample_rate=st.SAMPLE_RATE, caption=example["text"],
                       attributes=st.attribute_indices(example["attributes"]))


def serialize(record: Mapping) -> bytes:
    return FEATURES.serialize_example(dict(record))


def deserialize(data: bytes) -> dict:
    """Serialized record -> dict of numpy values (bytes for id / caption / media)."""
    try:
        return FEATURES.deserialize_example_np(data)
    except Exception as error:  # protobuf DecodeError and friends
        raise CorruptRecordError(f"corrupt record ({type(error).__name__}: {error})") from error


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_record(record: Mapping, modalities: Iterable[str]) -> dict:
    """A deserialized record -> raw example for `modalities`: image uint8 [H,W,3], video uint8 [T,H,W,3]
    (+ video_fps), audio float32 [N] (+ audio_sample_rate), text str; attributes always.

    Raises CorruptRecordError when a requested modality is missing or its media cannot be decoded.
    """
    name = f"record {_text(record['id'])!r}"
    raw = {"id": _text(record["id"]), "attributes": {a: int(record[a]) for a in ATTRIBUTES}}
    for modality in modalities:
        try:
            if modality == "image":
                raw["image"] = media.decode_image(bytes(record["image"]), f"{name} image")
            elif modality == "video":
                if len(record["video"]) == 0:
                    raise media.MediaError(f"{name} video: no frames")
                raw["video"] = np.stack([media.decode_image(bytes(f), f"{name} video frame") for f in record["video"]])
                raw["video_fps"] = float(record["video_fps"])
            elif modality == "audio":
                if len(record["audio"]) == 0:
                    raise media.MediaError(f"{name} audio: no samples")
                raw["audio"] = np.asarray(record["audio"], np.float32)
                raw["audio_sample_rate"] = int(record["audio_sample_rate"])
            elif modality == "text":
                raw["text"] = _text(record["caption"])
            else:
                raise ValueError(f"unknown modality {modality!r}; expected image, video, audio or text")
        except media.MediaError as error:
            raise CorruptRecordError(str(error)) from error
    return raw


def split_files(path, split: str) -> list[str]:
    """The ArrayRecord shards of `split` in a dataset directory, in order."""
    files = sorted(glob.glob(os.path.join(str(path), f"*-{split}.array_record-*-of-*")))
    if not files:
        raise ValueError(f"{path}: no ArrayRecord files for split {split!r} (expected *-{split}.array_record-*)")
    return files


class RecordSource:
    """Random access to one split of a dataset directory: source[i] -> deserialized record dict."""

    def __init__(self, path, split: str):
        import grain

        self.path, self.split = str(path), split
        files = split_files(path, split)
        try:
            self._source = grain.sources.ArrayRecordDataSource(files)
        except RuntimeError as error:
            raise CorruptRecordError(f"{path} split {split!r}: unreadable ArrayRecord file (truncated or not an "
                                     f"ArrayRecord file): {error or 'no detail'}") from error

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            return deserialize(self._source[index])
        except CorruptRecordError as error:
            raise CorruptRecordError(f"{self.path} split {self.split!r} index {index}: {error}") from error

    def __repr__(self) -> str:
        return f"RecordSource({self.path!r}, {self.split!r})"


class RecordWriter:
    """Writes one split of a dataset directory as ArrayRecord shards and keeps its TFDS metadata current.

    Shards are written under temporary names and renamed to TFDS' `name-split.array_record-0000i-of-0000n`
    on close; a split of the same name already there is replaced, other splits are kept in the metadata.
    """

    def __init__(self, data_dir, name: str, split: str, examples_per_shard: int = 1000, description: str = ""):
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.split, self.description = name, split, description
        self.examples_per_shard = int(examples_per_shard)
        self._shard_lengths: list[int] = []
        self._shard_sizes: list[int] = []
        self._writer = None
        self._closed = False
        for stale in self.data_dir.glob(f"{name}-{split}.array_record-*"):
            stale.unlink()

    def _temp(self, shard: int) -> pathlib.Path:
        return self.data_dir / f"{self.name}-{self.split}.array_record-partial{shard:05d}"

    def write(self, record: Mapping) -> None:
        from array_record.python import array_record_module

        if self._closed:
            raise ValueError("RecordWriter is closed")
        data = serialize(record)
        if self._writer is None or self._shard_lengths[-1] >= self.examples_per_shard:
            self._close_shard()
            self._writer = array_record_module.ArrayRecordWriter(str(self._temp(len(self._shard_lengths))),
                                                                 "group_size:1")
            self._shard_lengths.append(0)
            self._shard_sizes.append(0)
        self._writer.write(data)
        self._shard_lengths[-1] += 1
        self._shard_sizes[-1] += len(data)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def num_examples(self) -> int:
        return sum(self._shard_lengths)

    def close(self) -> pathlib.Path:
        """Finish the shards and write dataset_info.json / features.json; returns the directory."""
        if self._closed:
            return self.data_dir
        self._close_shard()
        self._closed = True
        count = len(self._shard_lengths)
        for shard in range(count):
            final = f"{self.name}-{self.split}.array_record-{shard:05d}-of-{count:05d}"
            self._temp(shard).rename(self.data_dir / final)
        write_metadata(self.data_dir, self.name, {self.split: (self._shard_lengths, sum(self._shard_sizes))},
                       self.description)
        return self.data_dir

    def __enter__(self) -> "RecordWriter":
        return self

    def abort(self) -> None:
        """Drop the shards written so far (the directory's other splits and metadata stay as they were)."""
        self._close_shard()
        self._closed = True
        for shard in range(len(self._shard_lengths)):
            self._temp(shard).unlink(missing_ok=True)

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _existing_splits(data_dir: pathlib.Path) -> dict[str, tuple[list[int], int]]:
    info_file = data_dir / "dataset_info.json"
    if not info_file.exists():
        return {}
    info = json.loads(info_file.read_text())
    return {s["name"]: ([int(n) for n in s.get("shardLengths", [])], int(s.get("numBytes", 0)))
            for s in info.get("splits", [])}


def write_metadata(data_dir, name: str, splits: Mapping[str, tuple[list[int], int]], description: str = "") -> None:
    """TFDS metadata for `splits` {split: (shard lengths, bytes)}, merged with the splits already recorded."""
    data_dir = pathlib.Path(data_dir)
    merged = {**_existing_splits(data_dir), **splits}
    template = tfds.core.ShardedFileTemplate(data_dir=data_dir, template=FILE_TEMPLATE, dataset_name=name,
                                             filetype_suffix="array_record")
    infos = [tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=size,
                                 filename_template=template.replace(split=split))
             for split, (lengths, size) in sorted(merged.items())]
    tfds.folder_dataset.write_metadata(data_dir=data_dir, features=FEATURES, split_infos=infos,
                                       filename_template=FILE_TEMPLATE, description=description,
                                       check_data=False)
