"""TFDS builder for Shapes & Tones, written as ArrayRecord in the shared record schema (codi_jax.data.records)."""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from codi_jax.data import records
from codi_jax.data import shapes_tones as st


@dataclasses.dataclass
class ShapesTonesConfig(tfds.core.BuilderConfig):
    resolution: int = st.DEFAULT_RESOLUTION
    examples_per_split: int = 1000


def config_for(resolution: int, examples_per_split: int) -> ShapesTonesConfig:
    return ShapesTonesConfig(name=f"r{resolution}_n{examples_per_split}", resolution=resolution,
                             examples_per_split=examples_per_split,
                             description=f"{examples_per_split} examples per split at {resolution} px")


class ShapesTones(tfds.core.GeneratorBasedBuilder):
    """Shapes & Tones: image, 8-frame video, 16 kHz audio and caption from shared hidden attributes."""

    VERSION = tfds.core.Version(records.VERSION)
    BUILDER_CONFIGS = [config_for(st.DEFAULT_RESOLUTION, 1000)]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=records.FEATURES,
            description="Procedural paired world (shapes-and-tones.md); attributes are indices into "
                        "COLORS / SHAPES / MOTIONS and the onset frame.")

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated
        return {split: self._generate_examples(split) for split in st.SPLITS}

    def _generate_examples(self, split: str):
        for index in range(self.builder_config.examples_per_split):
            yield f"{split}-{index}", records.shapes_tones_record(split, index, self.builder_config.resolution)


def prepare(data_dir: str, examples_per_split: int, resolution: int = st.DEFAULT_RESOLUTION) -> str:
    """Build `examples_per_split` examples of every split; returns the directory holding
    dataset_info.json and the ArrayRecord shards (DATA_DIR/shapes_tones/r{R}_n{N}/1.0.0)."""
    st.check_resolution(resolution)
    if examples_per_split < 1:
        raise ValueError(f"examples per split must be positive, got {examples_per_split}")
    builder = ShapesTones(data_dir=data_dir, config=config_for(resolution, examples_per_split),
                          file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_path)
