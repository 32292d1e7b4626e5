"""Cached encodings: what the frozen autoencoders and prompt encoders make of a dataset, stored once.

A cache directory (written by `python -m codi_jax.precompute`) holds, per split, ArrayRecord files of
tf.Example records (one per example, in the split's index order) with fixed-shape float32 fields:
  latent/<m>      the autoencoder posterior mean of modality m, unscaled (image, video, audio, text)
  latent_std/<m>  its standard deviation (image, video, audio; Optimus' latent is its mean)
  embedding/<m>   the L2-normalised prompt encoding [D] (text, image, video, audio)
  index, color, shape, motion, onset   int32: the example's index in its split and its attributes
and `encodings.json`: the field shapes, the example count of each split and where the weights came from.
Each process writes its own contiguous block of the split (`<split>-<p>-of-<n>.array_record`), so
reading the files in name order gives the split in index order whatever the process count.
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from codi_jax.data import shapes_tones as st

METADATA = "encodings.json"
INT_FIELDS = ("index",) + st.ATTRIBUTES


class CacheError(ValueError):
    """A cache directory that is missing, incomplete or of another layout."""


def features(shapes: Mapping[str, Sequence[int]]) -> tfds.features.FeaturesDict:
    fields = {k: tfds.features.Tensor(shape=tuple(s), dtype=np.float32) for k, s in shapes.items()}
    fields.update({k: tfds.features.Tensor(shape=(), dtype=np.int32) for k in INT_FIELDS})
    return tfds.features.FeaturesDict(fields)


def shard_name(split: str, process_index: int, process_count: int) -> str:
    return f"{split}-{process_index:05d}-of-{process_count:05d}.array_record"


def read_metadata(path) -> dict:
    file = pathlib.Path(path) / METADATA
    if not file.is_file():
        raise CacheError(f"{path}: not an encodings cache (no {METADATA}; write one with python -m codi_jax.precompute)")
    return json.loads(file.read_text())


def write_metadata(path, metadata: Mapping) -> None:
    file = pathlib.Path(path) / METADATA
    partial = file.with_suffix(".json.partial")
    partial.write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    os.replace(partial, file)


def remove_split(path, split: str) -> None:
    """Delete a split's files (finished or partial), so a rewrite with another process count leaves none behind."""
    for file in glob.glob(os.path.join(str(path), f"{split}-*-of-*.array_record*")):
        os.remove(file)


class ShardWriter:
    """One process's block of one split, written under a temporary name and renamed by `close`."""

    def __init__(self, path, split: str, shapes: Mapping[str, Sequence[int]], process_index: int = 0,
                 process_count: int = 1):
        from array_record.python import array_record_module

        self.features = features(shapes)
        self.final = pathlib.Path(path) / shard_name(split, process_index, process_count)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._writer = array_record_module.ArrayRecordWriter(str(self.partial), "group_size:1")
        self.count = 0

    def write(self, example: Mapping[str, np.ndarray]) -> None:
        self._writer.write(self.features.serialize_example(dict(example)))
        self.count += 1

    def close(self) -> None:
        self._writer.close()
        os.replace(self.partial, self.final)


class EncodingSource:
    """Random access to one split of a cache: source[i] -> {field: numpy array} of example i."""

    def __init__(self, path, split: str):
        import grain

        self.path, self.split = str(path), split
        metadata = read_metadata(path)
        if split not in metadata.get("splits", {}):
            raise CacheError(f"{path}: no split {split!r} in the cache (it has {sorted(metadata.get('splits', {}))})")
        files = sorted(glob.glob(os.path.join(self.path, f"{split}-*-of-*.array_record")))
        if not files:
            raise CacheError(f"{path}: the files of split {split!r} are missing")
        self.features = features(metadata["shapes"])
        self._source = grain.sources.ArrayRecordDataSource(files)
        if len(self._source) != metadata["splits"][split]:
            raise CacheError(f"{path} split {split!r}: {len(self._source)} examples on disk, "
                             f"{metadata['splits'][split]} recorded (an interrupted precompute?)")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        record = self.features.deserialize_example_np(self._source[index])
        return {k: np.asarray(v) for k, v in record.items()}

    def __repr__(self) -> str:
        return f"EncodingSource({self.path!r}, {self.split!r})"
