"""The network catalogue is the one list: configs, stages, converters and the sampler agree with it."""
import importlib
import pathlib

import pytest

from codi_jax import sampling
from codi_jax.sampling import pipeline as sampling_pipeline, weights
from codi_jax.convert import registry, released
from codi_jax.data import pipeline as data_pipeline
from codi_jax.eval import shapes_tones_eval
from codi_jax.models import catalogue, codi
from codi_jax.train.defaults import load_config_file
from codi_jax.train.stages import components

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("autoencoders", "bridging_align", "image_ldm", "video_ldm", "audio_ldm", "text_ldm", "latent_align")


def test_every_module_reads_the_one_list_of_modalities_and_networks():
    for module in (sampling, sampling_pipeline, data_pipeline, shapes_tones_eval, codi, components):
        assert module.MODALITIES is catalogue.MODALITIES, module.__name__
    assert sampling.COMPONENTS is sampling_pipeline.COMPONENTS is weights.COMPONENTS is catalogue.NAMES
    for table in (catalogue.UNET_OF, catalogue.LATENT_CODER_OF, catalogue.PROMPT_ENCODER_OF):
        assert tuple(table) == catalogue.MODALITIES and set(table.values()) <= set(catalogue.NAMES)
    assert set(catalogue.UNETS) == set(catalogue.UNET_OF.values())
    assert set(catalogue.LATENT_CODERS) == set(catalogue.LATENT_CODER_OF.values())


@pytest.mark.parametrize("name", catalogue.NAMES)
def test_each_network_builds_converts_and_is_held_by_its_stage(name):
    network = catalogue.NETWORKS[name]
    module = importlib.import_module(f"codi_jax.models.{network.module}")
    assert callable(module.build) and module.CONFIGS
    assert registry.get(network.converter).name == network.converter
    assert sum(name in names for names in released.FILES.values()) == 1  # one released file supplies it
    model = load_config_file(f"{REPO / 'configs' / network.stage}.py:full").model
    assert name in model, f"configs/{network.stage}.py has no model.{name}"


@pytest.mark.parametrize("variant", ["tiny", "cpu", "full"])
def test_sampling_and_training_configs_name_the_catalogue(variant):
    config = load_config_file(f"{REPO / 'configs' / 'sample.py'}:{variant}")
    assert set(config.models) == set(config.components) == set(catalogue.NAMES)
    if variant == "cpu":
        assert {name: config.components[name] for name in catalogue.NAMES} == {
            name: f"workdir:workdirs/{n.stage}" for name, n in catalogue.NETWORKS.items()}
    for stage in STAGES:
        model = load_config_file(f"{REPO / 'configs' / stage}.py:{variant}").model
        networks = {k for k in model if hasattr(model[k], "get") and "variant" in model[k]}
        assert networks <= set(catalogue.NAMES) | {"image_vae_disc", "audio_vae_disc", "vocoder_disc"}, stage
