"""configs/sample.py: the full variant is the released CoDi, the cpu variant matches the CPU training run,
and every variant's latents decode to the sizes and durations it states (shapes only, nothing allocated)."""
import jax
import pytest

from codi_jax import sampling
from codi_jax.sampling import Request
from codi_jax.sample import load_config

# codi-reference.md §1: parameter counts of the released components.
RELEASED = {"clip": 737_647_217, "clap": 280_951_959, "optimus": 109_489_920 + 132_109_824,
            "image_vae": 83_653_863, "audio_vae": 55_376_873, "vocoder": 55_264_897, "unet_image": 1_772_784_247,
            "unet_text": 2_048_385_408, "unet_audio": 431_309_032}


def _shapes(variant):
    config = load_config(f"configs/sample.py:{variant}")
    nets = sampling.build_networks(config)
    abstract = sampling.abstract_variables(nets)
    return config, abstract, sampling.output_shapes(config, nets, abstract)


def test_full_is_the_released_codi():
    config, abstract, shapes = _shapes("full")
    counts = {name: sum(x.size for x in jax.tree.leaves(v["params"])) for name, v in abstract.items()}
    assert counts == RELEASED
    assert shapes == {"image": (512, 512, 3), "video": (8, 256, 256, 3), "audio": (163_840,), "text": ()}
    assert config.audio_seconds == 10.24 and config.latents.text == (768,)
    assert all(source.startswith("released:") for source in config.components.values())


@pytest.mark.parametrize("variant,expected", [
    ("tiny", {"image": (32, 32, 3), "video": (4, 32, 32, 3), "audio": (5_120,), "text": ()}),
    ("cpu", {"image": (32, 32, 3), "video": (8, 32, 32, 3), "audio": (15_360,), "text": ()}),
])
def test_small_variants_state_their_sizes(variant, expected):
    config, _, shapes = _shapes(variant)
    assert shapes == expected
    assert shapes["audio"][0] == round(config.audio_seconds * 16000)


def test_cpu_matches_the_cpu_training_run():
    """The networks, resolution, frames and audio length latent_align:cpu trains, from the workdirs it writes."""
    config, _, shapes = _shapes("cpu")
    training = load_config("configs/latent_align.py:cpu")
    for name in sampling.COMPONENTS:
        trained = training.model.get(name)
        if trained is not None:
            assert config.models[name].to_dict() == trained.to_dict(), name
    data = training.data.preprocess
    assert shapes["image"][:2] == (data.image.size,) * 2 and shapes["video"][1:3] == (data.video.size,) * 2
    assert shapes["video"][0] == data.video.num_frames == config.condition_frames
    assert shapes["audio"][0] == training.model.audio_frames * 160
    assert config.components.unet_audio == "workdir:workdirs/latent_align"


@pytest.mark.parametrize("variant", ["tiny", "cpu", "full"])
def test_default_sampler_settings_make_a_valid_request(variant):
    defaults = load_config(f"configs/sample.py:{variant}").defaults
    request = Request.from_dict({"outputs": "image"}, defaults)
    assert (request.sampler, request.guidance) == ("ddim", 7.5)
