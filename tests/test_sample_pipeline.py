"""The generation pipeline on the tiny randomly initialised CoDi: output shapes, determinism, batching,
independent generation, conditioning mix and guidance, bad inputs, and weights from released files.

Two joint output sets (image+audio, video+text) and the two single outputs that `independent` needs
cover every output modality with four compiled sampling calls, shared by all tests here.
"""
import copy
import filecmp

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.data import shapes_tones as st
from codi_jax.sampling import ConfigError, CoDiPipeline, Request, RequestError
from codi_jax.sample import load_config

STEPS = 2


@pytest.fixture(scope="module")
def config():
    return load_config("configs/sample.py:tiny")


@pytest.fixture(scope="module")
def pipe(config):
    return CoDiPipeline.from_config(config, random_init=True)


@pytest.fixture(scope="module")
def example():
    return st.generate("test", 3, resolution=40)


def _request(example, outputs=("image", "audio"), **kwargs):
    inputs = {"text": example["text"], "image": example["image"]}
    return Request(outputs=outputs, steps=STEPS, **{**inputs, **kwargs})


def test_outputs_have_the_configured_shapes(pipe, example):
    a, b = pipe.generate_batch([_request(example), _request(example, ("video", "text"), audio=example["audio"],
                                                               video=example["video"], seed=1)], progress=False)
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    assert a["audio"].shape == (5120,) and a["audio"].dtype == np.float32 and np.abs(a["audio"]).max() <= 1
    assert b["video"].shape == (4, 32, 32, 3) and b["video"].dtype == np.uint8
    assert isinstance(b["text"], str)
    assert pipe.describe()["audio_seconds"] == 0.32
    # Random weights still give non-constant pictures (the VAE decoder is not degenerate).
    assert a["image"].std() > 1 and b["video"].std() > 1


def test_griffin_lim_mel_inversion_decodes_the_same_mel(config, pipe, example):
    """mel_inversion="griffin_lim" replaces only the vocoder: a wave of the vocoder's length whose log-mel is the
    one the audio VAE decoded (up to Griffin-Lim's phase estimate); the record says which decoder ran."""
    from codi_jax.data import mel
    from codi_jax.data.griffin_lim import mels_to_waves
    from codi_jax.sampling import GRIFFIN_LIM_ITERATIONS
    from codi_jax.sampling.compiled import decode_mel

    gl_config = copy.deepcopy(config)
    gl_config.mel_inversion = "griffin_lim"
    gl = CoDiPipeline(gl_config, pipe.nets, pipe.variables, pipe.sources, pipe.tokenizers)
    request = _request(example, ("audio",), seed=3)
    [out] = gl.generate_batch([request], progress=False)
    [reference] = pipe.generate_batch([request], progress=False)
    assert out["audio"].shape == reference["audio"].shape == (5120,)
    assert gl.describe()["mel_inversion"] == "griffin_lim" and pipe.describe()["mel_inversion"] == "vocoder"
    assert np.abs(out["audio"]).max() > 0 and not np.allclose(out["audio"], reference["audio"])
    # Same noise -> same latent -> the mel both decoders start from; Griffin-Lim's wave comes back close to it.
    latent = jax.random.normal(jax.random.key(0), (1,) + tuple(config.latents.audio))
    target = np.asarray(decode_mel(pipe.variables["audio_vae"], latent, vae=pipe.nets.audio_vae))[0]
    wave = mels_to_waves(target[None], 5120, GRIFFIN_LIM_ITERATIONS)[0]
    frames = target.shape[0] - 1
    again = np.asarray(mel.log_mel(jnp.asarray(wave[None])))[0][:frames]
    loud = target[:frames] > target.max() - 4.0
    assert np.median(np.abs(again - target[:frames])[loud]) < 0.5


def test_same_seed_same_files(pipe, example, tmp_path):
    request = _request(example, seed=7)
    for folder in ("a", "b"):
        pipe.save(tmp_path / folder, pipe.generate(request), request)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["audio.wav", "image.png", "request.json"]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert mismatch == [] and errors == []
    other = pipe.generate(_request(example, seed=8))
    assert not np.array_equal(other["image"], pipe.generate(request)["image"])


def test_batch_gives_the_same_outputs_as_one_request_at_a_time(pipe, example):
    requests = [_request(example, seed=1), _request(example, seed=2, guidance={"audio": 3.0}),
                _request(example, seed=3, text=None, weights={"image": 1.0}),
                _request(example, ("video", "text"), seed=4, video=example["video"], image=None, weights=None),
                _request(example, seed=5, audio=example["audio"])]
    batched = pipe.generate_batch(requests, progress=False)
    for request, together in zip(requests, batched):
        alone = pipe.generate(request)
        assert together.keys() == alone.keys() == set(request.outputs)
        for m in request.outputs:
            if m == "audio":
                # A request's row in the padded batch changes which CPU matmul kernel path its rows take, so
                # float32 waves agree to rounding (measured 1.3e-8), not bit for bit; pixels and text are exact.
                np.testing.assert_allclose(together[m], alone[m], rtol=0, atol=1e-6, err_msg=m)
            else:
                np.testing.assert_array_equal(together[m], alone[m], err_msg=m)


def test_independent_outputs_are_single_output_generations(pipe, example):
    independent = pipe.generate(_request(example, independent=True))
    for m in ("image", "audio"):
        alone = pipe.generate(_request(example, outputs=(m,)))
        np.testing.assert_array_equal(independent[m], alone[m], err_msg=m)
    # Jointly generated outputs go through the environment encoders and the joint cross-attention.
    joint = pipe.generate(_request(example))
    assert not np.array_equal(joint["image"], independent["image"])


def test_conditions_are_mixed_with_the_request_weights(pipe, example):
    text_only = pipe.generate(_request(example, image=None))
    zero_image_weight = pipe.generate(_request(example, weights={"text": 1.0, "image": 0.0}))
    np.testing.assert_array_equal(zero_image_weight["image"], text_only["image"])
    equal = pipe.generate(_request(example))
    scaled = pipe.generate(_request(example, weights={"text": 3.0, "image": 3.0}))
    np.testing.assert_array_equal(scaled["image"], equal["image"])
    image_heavy = pipe.generate(_request(example, weights={"text": 1.0, "image": 3.0}))
    assert not np.array_equal(image_heavy["image"], equal["image"])
    cond, uncond = pipe.condition(_request(example, weights={"text": 1.0, "image": 3.0}))
    expected = 0.25 * pipe.condition(_request(example, image=None))[0] + 0.75 * pipe.condition(
        _request(example, text=None))[0]
    np.testing.assert_allclose(cond, expected, atol=1e-6)
    # Not re-normalised: a mix of two different unit tokens is shorter than 1.
    assert float(jnp.linalg.norm(cond)) < 1 - 1e-3


def test_guidance_per_output(pipe, example):
    one_scale = pipe.generate(_request(example, guidance=7.5))
    per_output = pipe.generate(_request(example, guidance={"image": 7.5, "audio": 7.5}))
    for m in ("image", "audio"):
        np.testing.assert_array_equal(per_output[m], one_scale[m])
    weaker_audio = pipe.generate(_request(example, guidance={"audio": 1.0}, independent=True))
    independent = pipe.generate(_request(example, independent=True))
    np.testing.assert_array_equal(weaker_audio["image"], independent["image"])
    assert not np.array_equal(weaker_audio["audio"], independent["audio"])


def test_request_without_inputs_is_unconditional(pipe, example):
    out = pipe.generate(Request(outputs=("image", "audio"), steps=STEPS))
    cond, uncond = pipe.condition(Request(outputs=("image",)))
    np.testing.assert_array_equal(cond, uncond)
    assert out["image"].shape == (32, 32, 3)


def test_unconditional_tokens_are_the_originals(pipe):
    size = pipe.nets.clip.image_size
    gray = np.full((size, size, 3), 127, np.uint8)
    # CoDi's unconditional image is an all-zero image in [-1, 1]: mid-gray, 127 after the processor's floor.
    np.testing.assert_allclose(pipe._uncond("image"), pipe._encode("image", gray, 0), atol=1e-6)
    np.testing.assert_allclose(pipe._uncond("audio"), pipe._encode("audio", np.zeros(8000, np.float32), 0),
                               atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(text="a red circle " * 10), "text: text too long for the clip tokenizer"),
    (dict(video=np.zeros((2, 16, 16, 3), np.uint8)), "video: video has 2 frames, too few: expected at least 4"),
])
def test_inputs_the_encoders_reject(pipe, example, change, message):
    with pytest.raises(RequestError, match=message):
        pipe.generate_batch([_request(example, id="r7", **change)], progress=False)


@pytest.mark.parametrize("edit,message", [
    (lambda c: setattr(c, "latents", dict(c.latents, image=(16, 16, 3))), "latents.image .* has 3 channels"),
    (lambda c: setattr(c, "audio_seconds", 1.0), r"audio_seconds is 1.0 but latents.audio decodes to 32 mel frames"),
    (lambda c: c.models.optimus.overrides.update(encoder=dict(latent_size=8), decoder=dict(vocab_size=30, latent_size=8)),
     "does not match Optimus' latent size 8"),
    (lambda c: c.models.clip.overrides.update(projection_dim=24), "disagree on the context width"),
    (lambda c: setattr(c.components, "clip", "somewhere:/x"), "components.clip: 'somewhere:/x' is not"),
    (lambda c: setattr(c, "mel_inversion", "wavenet"), "mel_inversion: 'wavenet' is not one of"),
    (lambda c: setattr(c.components, "vocoder", "released:/no/such.pth"), "released weights /no/such.pth: no such"),
    (lambda c: setattr(c.components, "image_vae", "workdir:/no/such/dir"), "checkpoint /no/such/dir: no such directory"),
])
def test_config_errors(config, edit, message):
    broken = copy.deepcopy(config)
    edit(broken)
    with pytest.raises(ConfigError, match=message):
        CoDiPipeline.from_config(broken)


def test_released_unet_weights_switch_to_the_released_wiring(config, goldens_dir):
    from safetensors.numpy import load_file

    released = copy.deepcopy(config)
    released.components.unet_audio = f"released:{goldens_dir / 'unet_audio' / 'params.safetensors'}"
    pipe = CoDiPipeline.from_config(released)
    assert (pipe.wiring, pipe.aliased_skip) == ("own", True)
    assert pipe.describe()["components"]["unet_audio"].startswith("released:")
    io = load_file(str(goldens_dir / "unet_audio" / "io.safetensors"))
    x = jnp.transpose(jnp.asarray(io["x"]), (0, 2, 3, 1))
    forward = jax.jit(lambda v, x, t, c: pipe.nets.codi.apply(v, {"audio": x}, t, c, wiring="own", aliased_skip=True))
    eps = forward(pipe.codi_variables, x, jnp.asarray(io["timesteps"]), jnp.asarray(io["context"]))["audio"]
    ref = io["out_via_wrapper"]
    err = np.abs(np.transpose(np.asarray(eps), (0, 3, 1, 2)) - ref).max() / max(1.0, np.abs(ref).max())
    assert err <= 1e-4, err
