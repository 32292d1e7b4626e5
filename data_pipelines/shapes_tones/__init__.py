"""Shapes & Tones as a TFDS dataset: `python -m data_pipelines.shapes_tones --num N --data_dir DIR`."""
from data_pipelines.shapes_tones.shapes_tones_dataset_builder import (ShapesTones, ShapesTonesConfig, config_for,
                                                                       prepare)

__all__ = ["ShapesTones", "ShapesTonesConfig", "config_for", "prepare"]
