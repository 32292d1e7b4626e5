"""Stage objectives on their tiny configs (8 simulated devices): autoencoders, bridging_align, audio/text ldm.

Each run is the documented `python -m codi_jax.train --config configs/<stage>.py:tiny` in-process
(the same Trainer the CLI builds). "The loss falls" compares the mean training loss of the first
report interval (steps 1-10) with the last (steps 21-30), by the margin each test states. The
frozen / trainable split is checked leaf by leaf against the initial state.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax import checkpoints
from codi_jax.data import pipeline
from codi_jax.train import freeze, loop
from codi_jax.train.errors import ConfigError
from codi_jax.train.defaults import load_config_file
from codi_jax.train.stages.components import param_group

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name, **overrides):
    config = load_config_file(str(REPO / "configs" / f"{name}.py") + ":tiny")
    config.update_from_flattened_dict({"tensorboard": False, **overrides})
    return config


def run(config, workdir):
    """(initial params on host, final state, loss history) of one run."""
    trainer = loop.Trainer(config, str(workdir))
    initial = jax.device_get(trainer.restore_or_init())
    initial = freeze.flatten(freeze.merge(initial.params, initial.frozen))
    final = trainer.run()
    losses = [scalars["loss"] for _, scalars in trainer.history]
    return trainer, initial, final, losses


def changed_groups(initial, final_state):
    """{group: (changed leaves, total leaves)} comparing initial and final parameters bit for bit."""
    final = freeze.flatten(jax.device_get(final_state.full_params()))
    groups = {}
    for path, before in initial.items():
        group = param_group(path)
        changed, total = groups.get(group, (0, 0))
        groups[group] = (changed + int(not np.array_equal(before, final[path])), total + 1)
    return groups


def assert_only_trainable_changed(trainer, initial, final_state):
    final = freeze.flatten(jax.device_get(final_state.full_params()))
    for path, before in initial.items():
        if trainer.stage.is_trainable(path):
            continue
        np.testing.assert_array_equal(before, final[path], err_msg=f"frozen {path} changed")


@pytest.mark.slow  # about 220 s on a loaded 2-core machine: four networks compile
def test_autoencoders_tiny(tmp_path):
    trainer, initial, final, losses = run(load("autoencoders"), tmp_path)
    # Summed reconstruction losses of four random networks: the vocoder's mel / STFT terms dominate
    # (about 250 at first); after 30 steps the last interval is well under two thirds of the first.
    assert losses[-1] < 0.67 * losses[0], losses
    groups = changed_groups(initial, final)
    assert set(groups) == {"image_vae:all", "audio_vae:all", "vocoder:all", "optimus:all"}
    assert not freeze.flatten(final.frozen)  # every component trains here
    # Almost every leaf moves (a few, e.g. embeddings of tokens that never occur, may not).
    for group, (changed, total) in groups.items():
        assert changed >= 0.9 * total, (group, changed, total)


def test_autoencoders_carry_an_earlier_runs_component(tmp_path):
    """model.carried: Optimus trained alone, then carried untouched through an image-VAE run, whose
    checkpoint hands both on (the cpu run's text_vae -> autoencoders), with the latent scales the
    diffusers of later stages take."""
    short = {"total_steps": 3, "log_every_steps": 1, "checkpoint_every_steps": 3, "sample_every_steps": 100}
    text = load("autoencoders", **short, **{"model.components": ("optimus",)})
    _, _, text_final, _ = run(text, tmp_path / "text")
    optimus = {p: a for p, a in freeze.flatten(jax.device_get(text_final.full_params())).items()
               if p.startswith("optimus")}
    image = load("autoencoders", **short, **{"model.components": ("image_vae",), "model.carried": ("optimus",),
                                              "init_from.autoencoders": str(tmp_path / "text")})
    trainer, initial, final, _ = run(image, tmp_path / "image")
    assert set(changed_groups(initial, final)) == {"image_vae:all", "optimus:all"}
    assert changed_groups(initial, final)["optimus:all"][0] == 0
    carried = freeze.flatten(jax.device_get(final.frozen))
    assert set(carried) == set(optimus)
    for path, array in optimus.items():
        np.testing.assert_array_equal(carried[path], array, err_msg=path)
    # Every checkpoint records each coder's latent scale: 1 / the rms of its posterior samples.
    measured = checkpoints.saved_config(str(tmp_path / "image"))["measured"]["latent_scale"]
    assert set(measured) == {"image_vae", "optimus"}
    batch = pipeline.probe_batch(image.data, ["image", "text"], 256)
    params = jax.device_get(final.full_params())
    posterior = trainer.stage.networks.apply(params, "image_vae", batch["image"], method="encode")
    rms = np.sqrt(np.mean(np.square(posterior.mean) + np.square(posterior.std)))
    assert measured["image_vae"] == pytest.approx(1 / rms, rel=1e-4)
    # A diffuser whose coder says latent_scale "measured" takes it from that run, and records it.
    ldm = load("image_ldm", **{"model.image_vae.latent_scale": "measured",
                               "init_from.autoencoders": str(tmp_path / "image")})
    ldm_trainer = loop.Trainer(ldm, str(tmp_path / "ldm"))
    assert ldm_trainer.stage.networks["image_vae"].scale_factor == pytest.approx(measured["image_vae"])
    assert ldm_trainer.config.model.image_vae.overrides.scale_factor == pytest.approx(measured["image_vae"])
    with pytest.raises(ConfigError, match="latent_scale 'measured' needs config.init_from.autoencoders"):
        loop.Trainer(load("image_ldm", **{"model.image_vae.latent_scale": "measured"}), str(tmp_path / "ldm2"))
    with pytest.raises(ConfigError, match="needs config.init_from.autoencoders"):
        loop.Trainer(load("autoencoders", **{"model.components": ("image_vae",), "model.carried": ("optimus",)}),
                     str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="both in config.model.components and config.model.carried"):
        loop.Trainer(load("autoencoders", **{"model.carried": ("optimus",), "init_from.autoencoders": "x"}),
                     str(tmp_path / "bad2"))


def test_optimus_word_dropout_hides_decoder_inputs(tmp_path):
    """losses.optimus_word_dropout: the decoder's inputs after <BOS> become <PAD> at about that rate, the
    targets stay the caption; out of [0, 1) is one ConfigError."""
    config = load("autoencoders", **{"model.components": ("optimus",), "losses.optimus_word_dropout": 0.5})
    stage = loop.Trainer(config, str(tmp_path / "run")).stage
    batch = pipeline.probe_batch(config.data, ["text"], 64)
    params = jax.device_get(stage.init(jax.random.key(0)))
    seen, apply = {}, stage.networks.apply

    def spy(params, name, *args, method=None):
        if method == "decoder_logits":
            seen["inputs"] = np.asarray(args[0])
        return apply(params, name, *args, method=method)

    stage.networks.apply = spy
    stage._optimus(params, batch, jax.random.key(1), jnp.int32(0), config.losses)
    ids, inputs = np.asarray(batch["text_ids/gpt2"])[:, :-1], seen["inputs"]
    np.testing.assert_array_equal(inputs[:, 0], ids[:, 0])
    kept = inputs[:, 1:] == ids[:, 1:]
    assert np.all(kept | (inputs[:, 1:] == stage.gpt2_pad))
    words = ids[:, 1:] != stage.gpt2_pad
    assert 0.4 < 1 - kept[words].mean() < 0.6
    with pytest.raises(ConfigError, match=r"losses.optimus_word_dropout must be in \[0, 1\), got 1.0"):
        loop.Trainer(load("autoencoders", **{"model.components": ("optimus",), "losses.optimus_word_dropout": 1.0}),
                     str(tmp_path / "bad"))


@pytest.mark.slow  # about 180 s: CLIP video + CLAP compile
def test_bridging_align_paper_setting(tmp_path):
    # The paper: CLIP text and image towers frozen; CLAP, CLIP's temporal layers and the temperatures train.
    config = load("bridging_align", **{"model.pairs": ("text_audio", "text_video"),
                                       "model.trainable": ("clap:*", "clip:temporal", "bridge:*"),
                                       "data.preprocess.video.num_frames": 2})
    trainer, initial, final, losses = run(config, tmp_path)
    # Two InfoNCE terms of batch 16 start near 2 * ln 16 / 2 = 2.77; 30 steps take off at least 3 %.
    assert losses[-1] < 0.97 * losses[0], losses
    assert_only_trainable_changed(trainer, initial, final)
    groups = changed_groups(initial, final)
    assert groups["clip:text"][0] == 0 and groups["clip:vision"][0] == 0
    assert groups["clap:all"][0] > 0 and groups["clip:temporal"][0] > 0 and groups["bridge:all"][0] == 2


@pytest.mark.parametrize("name", [pytest.param("audio_ldm", marks=pytest.mark.slow), "text_ldm"])
def test_ldm_tiny(tmp_path, name):
    trainer, initial, final, losses = run(load(name), tmp_path)
    # eps-MSE starts near 1 (the zero-initialised output predicts 0); 30 steps take off at least 15 %.
    assert losses[-1] < 0.85 * losses[0], losses
    assert_only_trainable_changed(trainer, initial, final)
    unet = "unet_audio" if name == "audio_ldm" else "unet_text"
    groups = changed_groups(initial, final)
    assert groups[f"{unet}:base"][0] > 0
    for group, (changed, _) in groups.items():
        if group != f"{unet}:base":
            assert changed == 0, group


class _Tokens:
    """Prompt encoders whose encodings are known: modality m of example i is the vector m + 10 i."""
    value = {"text": 1.0, "image": 2.0, "audio": 4.0}

    def encode(self, params, modality, batch, rng):
        return (self.value[modality] + 10.0 * jnp.arange(batch["n"].shape[0]))[:, None, None] * jnp.ones((1, 1, 3))

    def unconditional(self, params, modality, rng):
        return jnp.full((1, 1, 3), -self.value[modality])


def test_conditioning_picks_one_condition_or_mixes_a_subset():
    from codi_jax.train.stages.ldm import Conditioning

    batch = {"n": jnp.zeros(4096)}
    encoders = _Tokens()
    one = Conditioning(encoders, ("text", "image", "audio"), dropout=0.0, mix=False)
    w = np.asarray(one.weights(jax.random.key(0), 4096))
    assert set(np.unique(w)) == {0.0, 1.0} and np.all(w.sum(0) == 1)
    assert np.allclose(w.mean(1), 1 / 3, atol=0.03)  # each condition equally often
    mixed = Conditioning(encoders, ("text", "image", "audio"), dropout=0.0, mix=True)
    w = np.asarray(mixed.weights(jax.random.key(1), 4096))
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
    sizes = np.sum(w > 0, axis=0)
    # Each condition kept with probability 1/2, one drawn when none is: singles 3/8 + 1/8, pairs 3/8, all 1/8.
    assert np.allclose([np.mean(sizes == k) for k in (1, 2, 3)], [1 / 2, 3 / 8, 1 / 8], atol=0.03)
    # The context is the weighted mix of the example's encodings: a subset mean of {1, 2, 4}, plus 10 i.
    means = {1.0: 1, 2.0: 1, 4.0: 1, 1.5: 2, 2.5: 2, 3.0: 2, 7 / 3: 3}
    context = np.asarray(mixed(None, batch, jax.random.key(1)))[:, 0, 0] - 10.0 * np.arange(4096)
    nearest = np.array([min(means, key=lambda m: abs(m - c)) for c in context])
    np.testing.assert_allclose(context, nearest, atol=1e-2)  # float32 at values up to 4e4
    assert np.mean([means[m] == 1 for m in nearest]) == pytest.approx(1 / 2, abs=0.03)
    # Dropped examples get the unconditional inputs mixed alike.
    context = np.asarray(Conditioning(encoders, ("text", "image", "audio"), dropout=1.0, mix=True)(
        None, batch, jax.random.key(1)))[:, 0, 0]
    assert all(min(abs(c + m) for m in means) < 1e-5 for c in context)


class _TimestepOnlyV:
    """Environment encoders that read nothing but the timestep: [B, 1, 8] unit vectors of t."""

    def apply(self, params, name, x, t, method):
        assert method == "env_encode"
        angles = t[:, None].astype(jnp.float32) * jnp.arange(1, 9, dtype=jnp.float32) / 100.0
        e = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
        return (e / jnp.linalg.norm(e, axis=-1, keepdims=True))[:, None]


def test_env_contrastive_cannot_be_met_by_the_timestep_alone():
    """latent_align's contrastive term noises the whole batch at one t: V reads the time embedding, so with a t per
    example the pairs of a batch are told apart by t alone. Encoders that see only t score chance: every logit
    equal, loss log(B), top-1 1/B (the first index wins every argmax)."""
    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.train import stages

    config = load("latent_align", **{"model.contrastive_weight": 0.1})
    stage = stages.build(config, mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}))
    stage.networks = _TimestepOnlyV()
    b = 16
    x0 = {"text": jnp.zeros((b, 16)), "image": jnp.zeros((b, 8, 8, 4))}
    for seed in range(3):
        loss, accuracy = stage.env_contrastive({}, ("text", "image"), x0, jax.random.key(seed))
        assert float(loss) == pytest.approx(np.log(b), rel=1e-5)
        assert float(accuracy) == pytest.approx(1 / b)


def test_env_contrastive_adds_a_time_shifted_negative_for_timed_pairs_only():
    """With model.shift_negatives each audio_video row also competes with its partner shifted in time: encoders
    that see only t tie all B + 1 candidates (loss log(B + 1)); a pair without a time axis keeps B (log B). The
    batch's t is drawn below model.contrastive_max_t."""
    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.train import stages

    seen = []

    class Recording(_TimestepOnlyV):
        def apply(self, params, name, x, t, method):
            seen.append(np.asarray(t))
            return super().apply(params, name, x, t, method)

    config = load("latent_align", **{"model.contrastive_weight": 0.1, "model.shift_negatives": 0.3,
                                     "model.contrastive_max_t": 20})
    stage = stages.build(config, mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}))
    stage.networks = Recording()
    b = 16
    timed = {"video": jnp.zeros((b, 8, 4, 4, 4)), "audio": jnp.zeros((b, 6, 4, 4))}
    untimed = {"text": jnp.zeros((b, 16)), "image": jnp.zeros((b, 8, 8, 4))}
    loss, _ = stage.env_contrastive({}, ("audio", "video"), timed, jax.random.key(0))
    assert float(loss) == pytest.approx(np.log(b + 1), rel=1e-5)
    loss, _ = stage.env_contrastive({}, ("text", "image"), untimed, jax.random.key(0))
    assert float(loss) == pytest.approx(np.log(b), rel=1e-5)
    assert len(seen) == 6 and max(int(t.max()) for t in seen) < 20  # of 1000 timesteps


def test_time_shifted_moves_each_row_and_repeats_the_edge():
    from codi_jax.train.stages.latent_align import random_shift_fractions, time_shifted

    x = jnp.broadcast_to(jnp.arange(8.0)[None, :, None], (3, 8, 2))
    out = time_shifted(x, jnp.array([0.25, -0.25, 0.01]))[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7, 7, 7],
                                        [0, 0, 1, 2, 3, 4, 5, 6]])  # the shortest shift is one position
    f = random_shift_fractions(jax.random.key(0), 1000, 0.375)
    assert 0.1 <= float(jnp.abs(f).min()) and float(jnp.abs(f).max()) <= 0.375
    assert 0.4 < float((f > 0).mean()) < 0.6


@pytest.mark.parametrize("key, value, message", [
    ("shift_negatives", 0.7, r"^config.model.shift_negatives must be in \[0, 0.5\] \(a fraction of the clip\), got 0.7$"),
    ("contrastive_max_t", 0, r"^config.model.contrastive_max_t must be in \[1, 1000\], got 0$")])
def test_env_contrastive_settings_out_of_range_are_one_config_error(key, value, message):
    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.train import stages

    config = load("latent_align", **{f"model.{key}": value})
    with pytest.raises(ConfigError, match=message):
        stages.build(config, mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}))


def test_info_nce_hard_negatives_are_one_more_candidate_per_row_on_8_shards():
    """Rows e_i (a = b): each row's logits are s at its positive and 0 elsewhere, so the loss is
    -log(e^s / (e^s + B - 1)); a hard negative equal to the positive adds e^s, an orthogonal one adds 1."""
    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.train.stages.contrastive import info_nce

    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    b, s = 8, 2.0
    eye = jnp.eye(b)
    log_scale = jnp.log(jnp.float32(s))
    expected = {"none": -np.log(np.exp(s) / (np.exp(s) + b - 1)),
                "equal": -np.log(np.exp(s) / (2 * np.exp(s) + b - 1)),
                "orthogonal": -np.log(np.exp(s) / (np.exp(s) + b))}
    for name, hard in (("none", {}), ("equal", {"hard_a": eye, "hard_b": eye}),
                       ("orthogonal", {"hard_a": jnp.zeros((b, b)), "hard_b": jnp.zeros((b, b))})):
        loss, accuracy = info_nce(eye, eye, log_scale, mesh, **hard)
        assert float(loss) == pytest.approx(expected[name], rel=1e-5), name
        assert float(accuracy) == 1.0  # a tie goes to the first index, the positive
    with pytest.raises(ValueError, match="pass both hard_a and hard_b, or neither"):
        info_nce(eye, eye, log_scale, mesh, hard_a=eye)
