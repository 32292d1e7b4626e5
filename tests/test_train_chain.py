"""The image -> video -> latent-alignment chain on tiny configs, with checkpoints handed between stages.

image_ldm trains the image UNet's base group; video_ldm starts from that checkpoint
(config.init_from.image_ldm) and trains only the temporal layers; latent_align starts from it too
and trains only the environment encoders and joint connectors, with the UNets frozen (README command 1, which
chains every stage, is tests/test_quickstart.py).
"""
import pathlib

import jax
import numpy as np
import pytest

from codi_jax.parallel import mesh as mesh_lib
from codi_jax.train import freeze, loop
from codi_jax.checkpoints import restore_params

from test_train_stages import assert_only_trainable_changed, changed_groups, load, run

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_ldm(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("image_ldm")
    trainer, initial, final, losses = run(load("image_ldm"), workdir)
    return workdir, trainer, initial, final, losses


def test_image_ldm_tiny(image_ldm):
    _, trainer, initial, final, losses = image_ldm
    # eps-MSE from about 0.7 (random latents) falls by at least a half in 30 steps.
    assert losses[-1] < 0.5 * losses[0], losses
    assert_only_trainable_changed(trainer, initial, final)
    groups = changed_groups(initial, final)
    assert groups["unet_image:base"][0] > 0
    assert all(changed == 0 for g, (changed, _) in groups.items() if g != "unet_image:base")


def test_video_ldm_from_image_trains_temporal_only(image_ldm, tmp_path):
    image_dir = image_ldm[0]
    config = load("video_ldm", **{"init_from.image_ldm": str(image_dir),
                                  "model.trainable": ("unet_image:temporal",)})
    trainer, initial, final, losses = run(config, tmp_path)
    _, pretrained = restore_params(str(image_dir), True)
    # The hand-off: every unet_image leaf starts as the image ldm left it.
    for path, value in pretrained.items():
        if path.startswith("unet_image/"):
            np.testing.assert_array_equal(initial[path], value, err_msg=path)
    assert_only_trainable_changed(trainer, initial, final)
    groups = changed_groups(initial, final)
    assert groups["unet_image:temporal"][0] > 0 and groups["unet_image:base"][0] == 0
    # Only the temporal layers move (they start as identities): a smaller drop than the image run's.
    assert losses[-1] < 0.95 * losses[0], losses


@pytest.mark.slow  # about 6 min: two full CoDi UNet pairs compile, plus the fixed-batch loss
def test_latent_align_trains_env_and_joint_only(image_ldm, tmp_path):
    image_dir = image_ldm[0]
    config = load("latent_align", **{"init_from.image_ldm": str(image_dir), "model.trainable": (),
                                     "model.objectives": ("text_image",)})
    config.data.objectives = {"text_image": config.data.objectives.text_image}
    trainer, initial, final, losses = run(config, tmp_path)
    assert_only_trainable_changed(trainer, initial, final)
    groups = changed_groups(initial, final)
    for unet in ("unet_image", "unet_text"):
        assert groups[f"{unet}:base"][0] == 0
        assert groups[f"{unet}:env"][0] > 0 and groups[f"{unet}:joint"][0] > 0, (unet, groups)
    # L_image + L_text on one fixed batch with fixed noise and timesteps, before and after. The text
    # UNet is random: its zero-initialised output conv predicts 0 whatever the connectors do, so L_text
    # is constant and the change is the image UNet's, whose connectors read V_text(z_text) ("others").
    before = fixed_loss(trainer, freeze.unflatten(initial))
    after = fixed_loss(trainer, jax.device_get(final.full_params()))
    assert after < before - 0.005, (before, after)


def fixed_loss(trainer, params, draws=4):
    """The stage loss on the first batch of a fresh iterator, averaged over fixed rng keys."""
    c = trainer.config
    data = trainer.stage.dataset(global_batch_size=c.batch_size, process_index=0, process_count=1, seed=c.seed)
    batch = mesh_lib.shard_host_batch(next(data), trainer.mesh)
    with loop.sharding_context(trainer.mesh):
        fn = jax.jit(trainer.stage.loss)
        return float(np.mean([fn(params, batch, jax.random.key(i), 0)[0] for i in range(draws)]))
