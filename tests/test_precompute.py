"""Cached encodings: `python -m codi_jax.precompute` writes what the frozen encoders make of a dataset, and an
ldm trained on the cache equals the same ldm trained with on-the-fly encoding."""
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from codi_jax import checkpoints, precompute
from codi_jax.data import encodings, pipeline
from codi_jax.train import freeze, loop
from codi_jax.train.defaults import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT = {"total_steps": 3, "log_every_steps": 1, "checkpoint_every_steps": 3, "sample_every_steps": 100,
         "ema_decay": 0.0, "tensorboard": False}


def _ldm_config(**extra):
    config = load_config_file(str(REPO / "configs" / "image_ldm.py") + ":tiny")
    config.data.shapes_tones.examples.train = 32
    config.update_from_flattened_dict({**SHORT, **extra})
    return config


def _precompute_config(data, workdir):
    config = load_config_file(str(REPO / "configs" / "precompute.py") + ":tiny")
    config.data = ml_collections.ConfigDict(data.to_dict())
    config.latents, config.embeddings = ("image",), ("text",)
    config.splits = ml_collections.ConfigDict({"train": 32, "validation": 8})
    config.batch_size = 8
    config.init_from.autoencoders = config.init_from.bridging_align = str(workdir)
    return config


@pytest.fixture(scope="module")
def on_the_fly(tmp_path_factory):
    """An image ldm trained 3 steps with on-the-fly encoding; its checkpoint holds the frozen encoders."""
    workdir = tmp_path_factory.mktemp("on_the_fly")
    trainer = loop.Trainer(_ldm_config(), str(workdir))
    final = trainer.run()
    return workdir, trainer, freeze.flatten(jax.device_get(final.full_params()))


@pytest.fixture(scope="module")
def cache(on_the_fly, tmp_path_factory):
    workdir, trainer, _ = on_the_fly
    out = tmp_path_factory.mktemp("cache")
    precompute.precompute(_precompute_config(trainer.config.data, workdir), str(out))
    return out


def test_cache_layout_and_contents(cache, on_the_fly):
    metadata = encodings.read_metadata(cache)
    assert metadata["splits"] == {"train": 32, "validation": 8}
    assert metadata["shapes"] == {"latent/image": [8, 8, 4], "latent_std/image": [8, 8, 4], "embedding/text": [32]}
    train = encodings.EncodingSource(cache, "train")
    assert len(train) == 32 and [int(train[i]["index"]) for i in (0, 31)] == [0, 31]
    example = train[5]
    assert np.all(example["latent_std/image"] > 0)
    np.testing.assert_allclose(np.linalg.norm(example["embedding/text"]), 1.0, rtol=1e-5)
    # The stored posterior is the frozen VAE's on the example the pipeline generates for index 5.
    workdir, trainer, _ = on_the_fly
    data = ml_collections.ConfigDict(trainer.config.data.to_dict())
    data.shuffle = False
    batch = next(pipeline.make_dataset(data, global_batch_size=8))
    params = freeze.unflatten(checkpoints.restore_params(str(workdir), False)[1])
    posterior = trainer.stage.coders.posterior(params, "image", batch)
    np.testing.assert_allclose(example["latent/image"], np.asarray(posterior[0])[5], rtol=1e-4, atol=1e-5)
    rms = metadata["latent_rms"]["image"]
    assert 0 < rms < 10


def test_training_on_the_cache_equals_on_the_fly(cache, on_the_fly, tmp_path):
    _, reference_trainer, reference = on_the_fly
    trainer = loop.Trainer(_ldm_config(**{"data.encodings": str(cache)}), str(tmp_path))
    final = freeze.flatten(jax.device_get(trainer.run().full_params()))
    losses = [s["loss"] for _, s in trainer.history]
    assert losses == pytest.approx([s["loss"] for _, s in reference_trainer.history], rel=1e-4)
    assert final.keys() == reference.keys()
    # Adam divides by the gradients' rms, which turns float rounding in near-zero gradients into update
    # differences of ~1e-6 (the learning rate is 2e-3): equal up to that.
    for path, value in reference.items():
        np.testing.assert_allclose(final[path], value, rtol=1e-4, atol=1e-5, err_msg=path)


def test_a_finished_split_is_kept_and_other_settings_rewrite(cache, on_the_fly, capsys):
    workdir, trainer, _ = on_the_fly
    before = (cache / "train-00000-of-00001.array_record").stat().st_mtime_ns
    precompute.precompute(_precompute_config(trainer.config.data, workdir), str(cache))
    assert (cache / "train-00000-of-00001.array_record").stat().st_mtime_ns == before
    config = _precompute_config(trainer.config.data, workdir)
    config.splits.train = 16
    metadata = precompute.precompute(config, str(cache))
    assert metadata["splits"]["train"] == 16 and len(encodings.EncodingSource(cache, "train")) == 16


def test_missing_cache_is_one_line(tmp_path):
    with pytest.raises(encodings.CacheError, match="not an encodings cache"):
        encodings.EncodingSource(tmp_path, "train")
    (tmp_path / encodings.METADATA).write_text(json.dumps({"splits": {"train": 4}, "shapes": {}}))
    with pytest.raises(encodings.CacheError, match="files of split 'train' are missing"):
        encodings.EncodingSource(tmp_path, "train")
