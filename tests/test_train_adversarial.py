"""Adversarial / perceptual losses of the autoencoders stage (codi_jax/train/stages/adversarial.py,
codi_jax/models/discriminators.py): loss values, the adaptive weight, gradient routing in the one summed
loss, disc_start gating, a short sharded run (8 simulated devices), the full config's discriminators, LPIPS."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding
from safetensors.numpy import save_file

from codi_jax.models import discriminators
from codi_jax.parallel.mesh import batch_spec
from codi_jax.parallel.partitioning import unbox_values
from codi_jax.train import freeze, loop
from codi_jax.train.defaults import load_config_file
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages import adversarial

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**losses):
    config = load_config_file(str(REPO / "configs" / "autoencoders.py") + ":tiny")
    config.tensorboard = False
    config.losses.adversarial = True
    config.losses.update(losses)
    return config


class ToyDecoder(nn.Module):
    """A stand-in generator ending in a conv named conv_out, as the VAE decoder does."""
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(4, (3, 3), name="conv_in")(x))
        return nn.Conv(3, (3, 3), strides=(self.strides,) * 2, padding=((1, 1), (1, 1)), name="conv_out")(h)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_gan_losses_analytic():
    real = jnp.array([2.0, 0.5, -1.0, 0.0])
    fake = jnp.array([-2.0, 0.5, 1.0, 0.0])
    # relu(1 - real) = [0, .5, 2, 1] (mean .875), relu(1 + fake) = [0, 1.5, 2, 1] (mean 1.125): 0.5 * 2.
    assert float(adversarial.hinge_d_loss(real, fake)) == pytest.approx(1.0)
    assert float(adversarial.hinge_g_loss(fake)) == pytest.approx(0.125)
    reals, fakes = [jnp.array([1.0, 0.0]), jnp.array([2.0])], [jnp.array([0.0, 1.0]), jnp.array([3.0])]
    # (0 + 1) / 2 + (0 + 1) / 2 = 1, plus (1 - 2)^2 + 3^2 = 10.
    assert float(adversarial.least_squares_d_loss(reals, fakes)) == pytest.approx(11.0)
    # (1 + 0) / 2 + (1 - 3)^2.
    assert float(adversarial.least_squares_g_loss(fakes)) == pytest.approx(4.5)
    maps_r = [[jnp.zeros((2, 3)), jnp.ones((4,))], [jnp.full((2,), 2.0)]]
    maps_f = [[jnp.ones((2, 3)), jnp.ones((4,))], [jnp.full((2,), -1.0)]]
    assert float(adversarial.feature_matching_loss(maps_r, maps_f)) == pytest.approx(1.0 + 0.0 + 3.0)


def test_adaptive_weight_toy():
    rec, gan = jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0])
    assert float(adversarial.adaptive_weight(rec, gan, 0.5)) == pytest.approx(0.5 * 5.0 / (2.0 + 1e-4))
    # A vanishing GAN gradient hits the 1e4 clip; the weight is a constant for the outer gradient.
    assert float(adversarial.adaptive_weight(rec, jnp.zeros(2), 0.5)) == pytest.approx(0.5e4)
    assert not np.any(jax.grad(lambda r: adversarial.adaptive_weight(r, gan, 0.5))(rec))

    # A generator ending in a strided conv: the tap's kernel gradient equals jax.grad through the whole network.
    toy = ToyDecoder(strides=2)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = toy.init(jax.random.key(1), x)
    target = jax.random.normal(jax.random.key(2), (2, 3, 3, 3))
    rec_of = lambda y: jnp.mean(jnp.abs(y - target))
    gan_of = lambda y: -jnp.mean(jnp.sin(3.0 * y))

    def brute(fn):
        def of_kernel(k):
            v = jax.tree.map(lambda a: a, variables)
            v["params"]["conv_out"]["kernel"] = k
            return fn(toy.apply(v, x))
        return jax.grad(of_kernel)(variables["params"]["conv_out"]["kernel"])

    @jax.jit
    def grads():
        tap = adversarial.LastLayerTap(("conv_out",))
        with tap:
            out = toy.apply(variables, x)
        return (out, tap.output(tap.kernel), tap.kernel_grad(rec_of), tap.kernel_grad(gan_of), brute(rec_of),
                brute(gan_of))

    out, recomputed, rec_grad, gan_grad, rec_brute, gan_brute = grads()
    np.testing.assert_allclose(recomputed, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec_grad, rec_brute, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gan_grad, gan_brute, rtol=1e-5, atol=1e-7)
    expected = 0.5 * np.linalg.norm(rec_brute) / (np.linalg.norm(gan_brute) + 1e-4)
    assert float(adversarial.adaptive_weight(rec_grad, gan_grad, 0.5)) == pytest.approx(expected, rel=1e-5)


def _assert_routing(grads, gen, disc, d_term, g_terms):
    """grads[term] are gradients of the named loss terms over {gen: ..., disc: ...}."""
    zero = lambda tree: all(not np.any(leaf) for leaf in jax.tree.leaves(tree))
    assert zero(grads[d_term][gen]), f"the discriminator loss reaches {gen}"
    assert not zero(grads[d_term][disc])
    for g in g_terms:
        assert zero(grads[g][disc]), f"{g} reaches {disc}"
        assert not zero(grads[g][gen])
    # The summed loss gives the discriminator exactly its own loss's gradient.
    for total, own in zip(jax.tree.leaves(grads["loss"][disc]), jax.tree.leaves(grads[d_term][disc])):
        np.testing.assert_allclose(total, own, rtol=1e-5, atol=1e-9)


def _gradients(terms, names, params):
    values, jac = jax.jit(lambda p: (terms(p), jax.jacrev(terms)(p)))(params)
    assert np.all(np.isfinite(values)), values
    return {n: jax.tree.map(lambda g, i=i: g[i], jac) for i, n in enumerate(names)}


def _stage(component, **model_overrides):
    config = tiny_config(disc_start=0)
    config.model.components = (component,)
    config.model[f"{component}_disc"].overrides.update(model_overrides)
    return loop.setup(config)[1]


def test_gradient_routing_patch_gan():
    """LDM's summed terms (hinge + adaptive-weighted generator loss through conv_out) on a toy generator:
    the discriminator moves only with its own loss, the generator's GAN term moves only the generator."""
    stage = _stage("image_vae")
    module = stage.discriminators["image_vae_disc"]
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3), minval=-1.0, maxval=1.0)
    z = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    params = {"image_vae": ToyDecoder().init(jax.random.key(2), z),
              "image_vae_disc": unbox_values(jax.jit(module.init)(jax.random.key(3), x))}
    names = ["loss", "d_loss", "g_loss"]

    def terms(p):
        tap = adversarial.LastLayerTap(("conv_out",))
        with tap:
            recon = ToyDecoder().apply(p["image_vae"], z)
        total, parts = stage._patch_gan("image_vae_disc", tap, 0.5, p, x, recon)
        return jnp.stack([total] + [parts[n] for n in names[1:]])

    _assert_routing(_gradients(terms, names, params), "image_vae", "image_vae_disc", names[1], names[2:])


def test_gradient_routing_hifigan():
    """HiFi-GAN's terms (least squares + feature matching) on a toy generator: the same routing."""
    stage = _stage("vocoder", periods=(3,), num_scales=1)
    module = stage.discriminators["vocoder_disc"]
    real = 0.5 * jnp.sin(jnp.linspace(0.0, 60.0, 2 * 64)).reshape(2, 64)
    params = {"vocoder": {"w": jnp.array(0.7), "b": jnp.array(0.1)},
              "vocoder_disc": unbox_values(jax.jit(module.init)(jax.random.key(0), real))}
    names = ["loss", "d_loss", "g_loss", "feature_matching"]

    def terms(p):
        fake = jnp.tanh(p["vocoder"]["w"] * jnp.roll(real, 3, axis=-1) + p["vocoder"]["b"])
        total, parts = stage._hifigan_gan(2.0, p["vocoder_disc"], real, fake)
        return jnp.stack([total] + [parts[n] for n in names[1:]])

    _assert_routing(_gradients(terms, names, params), "vocoder", "vocoder_disc", names[1], names[2:])


@pytest.mark.slow  # about 60 s on a loaded 2-core machine: the tiny VAE loss compiles with three cotangents
def test_gradient_routing_stage_loss():
    """The same through the stage's loss on the tiny image VAE (tap on the real decoder's conv_out)."""
    stage = _stage("image_vae")
    params = unbox_values(stage.init(jax.random.key(0)))
    batch = {"image": jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1.0, maxval=1.0)}
    names = ["loss", "image_vae/d_loss", "image_vae/g_loss"]

    def terms(p):
        loss, metrics = stage.loss(p, batch, jax.random.key(1), jnp.int32(0))
        return jnp.stack([loss] + [metrics[n] for n in names[1:]])

    _assert_routing(_gradients(terms, names, params), "image_vae", "image_vae_disc", names[1], names[2:])


def test_disc_start_and_sharded_training(tmp_path):
    """The tiny config with adversarial=True on 8 devices: GAN terms exactly zero and the discriminator
    untouched before disc_start, then d / g losses logged, finite, and the discriminator trains."""
    config = tiny_config(disc_start=2)
    config.model.components = ("image_vae",)
    config.optim.weight_decay = 0.0  # AdamW would otherwise decay the (gradient-free) discriminator kernels
    assert jax.device_count() == 8
    trainer = loop.Trainer(config, str(tmp_path))
    state = trainer.restore_or_init()
    assert trainer.stage.is_trainable("image_vae_disc/params/conv_0/kernel")
    batch = trainer.next_batch()
    step = trainer.compile(batch)
    disc = lambda s: freeze.flatten(jax.device_get(s.params["image_vae_disc"]))
    gen = lambda s: freeze.flatten(jax.device_get(s.params["image_vae"]))
    before_disc, before_gen = disc(state), gen(state)
    gan_keys = ("image_vae/d_loss", "image_vae/g_loss", "image_vae/d_weight", "image_vae/logits_real",
                "image_vae/logits_fake")
    for i in range(4):
        state, metrics = step(state, batch)
        metrics = jax.device_get(metrics)
        assert np.isfinite(metrics["loss"]) and metrics["nonfinite"] == 0.0
        now_disc = disc(state)
        if i < 2:
            assert all(metrics[k] == 0.0 for k in gan_keys), {k: metrics[k] for k in gan_keys}
            assert all(np.array_equal(before_disc[p], now_disc[p]) for p in before_disc)
        else:
            assert all(np.isfinite(metrics[k]) and metrics[k] != 0.0 for k in gan_keys), metrics
            assert metrics["image_vae/d_weight"] > 0.0
    # Every kernel trained (conv_out's bias may not: its hinge gradient cancels while all logits sit in (-1, 1)).
    assert all(not np.array_equal(before_disc[p], now_disc[p]) for p in before_disc if p.endswith("kernel"))
    assert any(not np.array_equal(before_gen[p], v) for p, v in gen(state).items())


def test_full_config_discriminators(tmp_path):
    """configs/autoencoders.py:full starts with the GAN on; discriminator sizes (BatchNorm -> GroupNorm keeps
    SD's 2,765,633; weight norm on every HiFi-GAN conv, the first MSD scale included)."""
    config = load_config_file(str(REPO / "configs" / "autoencoders.py") + ":full")
    config.tensorboard = False
    assert config.losses.adversarial and config.losses.disc_start == 50001 and config.losses.lpips_path == ""
    trainer = loop.Trainer(config, str(tmp_path))
    params = trainer.layout.abstract.params
    assert count(params["image_vae_disc"]) == 2_765_633
    assert count(params["audio_vae_disc"]) == 2_763_585
    vocoder_disc = params["vocoder_disc"]["params"]
    assert count(vocoder_disc) == 70_728_688
    assert sum(count(v) for k, v in vocoder_disc.items() if k.startswith("period_")) == 41_105_770
    assert sum(count(v) for k, v in vocoder_disc.items() if k.startswith("scale_")) == 29_622_918
    assert "optimus_disc" not in params and "lpips" not in params
    assert params["image_vae_disc"]["params"]["conv_3"]["kernel"].shape == (4, 4, 256, 512)


def test_bad_inputs_and_configs():
    patch = discriminators.build("tiny")
    with pytest.raises(ValueError, match=r"expected \[B, H, W, 3\], got shape \(1, 16, 16, 1\)"):
        patch.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="at least 12 for 2 layers, got \\(8, 16\\)"):
        patch.init(jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
    with pytest.raises(ValueError, match=r"expected a wave \[B, N\] with N >= 4"):
        discriminators.build("hifigan_tiny").init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="unknown discriminator variant 'huge'"):
        discriminators.build("huge")
    config = tiny_config()
    config.model.audio_vae_disc.variant = "tiny"  # 3 channels for the 1-channel mel
    with pytest.raises(ConfigError, match="audio_vae_disc takes 3 channels; audio_vae makes 1"):
        loop.setup(config)
    del config.model["vocoder_disc"]
    config.model.audio_vae_disc.variant = "audio_tiny"
    with pytest.raises(ConfigError, match="needs config.model.vocoder_disc"):
        loop.setup(config)


@pytest.mark.slow  # about 30 s: traces the full-size train step (nothing compiles or runs)
def test_full_config_traces(tmp_path):
    config = load_config_file(str(REPO / "configs" / "autoencoders.py") + ":full")
    config.tensorboard = False
    config.model.components = ("image_vae", "audio_vae", "vocoder")
    trainer = loop.Trainer(config, str(tmp_path))
    shapes = {"image": (256, 256, 256, 3), "audio": (256, 163840)}
    batch = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(trainer.mesh, batch_spec(len(s))))
             for k, s in shapes.items()}
    with loop.sharding_context(trainer.mesh):
        _, metrics = jax.eval_shape(trainer.step_fn(), trainer.layout.abstract, batch)
    for name in ("image_vae", "audio_vae"):
        assert {f"{name}/{k}" for k in ("d_loss", "g_loss", "d_weight", "logits_real", "logits_fake")} <= set(metrics)
    assert {"vocoder/d_loss", "vocoder/g_loss", "vocoder/feature_matching"} <= set(metrics)


@pytest.mark.slow  # minutes (470 s on a loaded 2-core machine): four networks and three discriminators compile
def test_tiny_all_components_adversarial(tmp_path):
    config = tiny_config()
    config.total_steps, config.log_every_steps = 12, 6
    trainer = loop.Trainer(config, str(tmp_path))
    trainer.run()
    (_, first), (_, last) = trainer.history
    gan = [f"{v}/{k}" for v in ("image_vae", "audio_vae") for k in ("d_loss", "g_loss", "d_weight")]
    vocoder = ["vocoder/d_loss", "vocoder/g_loss", "vocoder/feature_matching"]
    # The VAEs' GAN starts at step 10 (steps 1-6 average exact zeros); HiFi-GAN's from the start.
    assert all(first[k] == 0.0 for k in gan), first
    for key in gan + vocoder:
        assert np.isfinite(last[key]) and last[key] != 0.0, (key, last)
    assert all(first[k] != 0.0 for k in vocoder)
    assert np.isfinite(last["loss"])


# torchvision's VGG16 `features` (conv widths, "M" = 2x2 max-pool): module indices count conv, ReLU and pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
SLICE_STARTS = (4, 9, 16, 23)      # LPIPS' slice1..5 = features[0:4], [4:9], [9:16], [16:23], [23:30]
SLICE_ENDS = (3, 8, 15, 22, 29)    # the ReLU whose output each slice returns


def _lpips_state(prefix: str) -> dict:
    """A random LPIPS state dict in the original key layout (structure check only: no trained weights)."""
    gen = torch.Generator().manual_seed(0)
    state, index, c_in = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            index += 1
            continue
        n = 1 + sum(index >= s for s in SLICE_STARTS)
        state[f"net.slice{n}.{index}.weight"] = torch.randn(v, c_in, 3, 3, generator=gen) * (2.0 / (9 * c_in)) ** 0.5
        state[f"net.slice{n}.{index}.bias"] = 0.1 * torch.randn(v, generator=gen)
        index, c_in = index + 2, v
    for k, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=gen)
    return {prefix + k: v for k, v in state.items()}


def _torch_lpips(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS (VGG, lin) of NCHW batches in [-1, 1], written from the original's description."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(h):
        h, out, index = (h - shift) / scale, [], 0
        for v in VGG16_CFG:
            if v == "M":
                h, index = torch.nn.functional.max_pool2d(h, 2, 2), index + 1
                continue
            n = 1 + sum(index >= s for s in SLICE_STARTS)
            w, b = state[f"net.slice{n}.{index}.weight"], state[f"net.slice{n}.{index}.bias"]
            h = torch.relu(torch.nn.functional.conv2d(h, w, b, padding=1))
            if index + 1 in SLICE_ENDS:
                out.append(h)
            index += 2
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
        total = total + torch.nn.functional.conv2d((a - b) ** 2, state[f"lin{k}.model.1.weight"]).mean(dim=(2, 3))
    return total[:, 0]


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """An LDM-checkpoint-like safetensors file: LPIPS under `loss.perceptual_loss.`, plus unrelated keys."""
    state = _lpips_state("loss.perceptual_loss.")
    path = tmp_path_factory.mktemp("lpips") / "ldm_like.safetensors"
    arrays = {k: v.numpy() for k, v in state.items()}
    arrays["loss.discriminator.main.0.weight"] = np.zeros((64, 3, 4, 4), np.float32)
    save_file(arrays, str(path))
    return path, {k[len("loss.perceptual_loss."):]: v for k, v in state.items()}


@pytest.mark.parametrize("channels", [3, 1])  # 1: AudioLDM's mel, broadcast to 3 by the scaling layer
def test_lpips_matches_reference_structure(lpips_file, channels):
    path, state = lpips_file
    module = adversarial.Lpips()
    variables = unbox_values(adversarial.lpips_variables(module, adversarial.load_lpips(str(path))))
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, channels), minval=-1.0, maxval=1.0)
    y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), -1.0, 1.0)
    ours = jax.jit(module.apply)(variables, x, y)
    to_torch = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
    reference = _torch_lpips(state, to_torch(x), to_torch(y)).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(jax.jit(module.apply)(variables, x, x)))) < 1e-9


def test_lpips_in_stage(lpips_file, tmp_path):
    path, _ = lpips_file
    config = tiny_config(lpips_path=str(path))
    config.losses.adversarial = False
    config.model.components = ("image_vae",)
    trainer = loop.Trainer(config, str(tmp_path))
    assert "lpips" in trainer.layout.abstract.frozen and "lpips" not in trainer.layout.abstract.params
    assert count(trainer.layout.abstract.frozen["lpips"]) == 14_714_688 + 1_472  # VGG16 convs + lin layers
    config.losses.lpips_path = str(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="losses.lpips_path: LPIPS weights file .* not found"):
        loop.Trainer(config, str(tmp_path))
    bad = tmp_path / "bad.safetensors"
    save_file({"net.slice1.0.weight": np.zeros((64, 3, 3, 3), np.float32)}, str(bad))
    with pytest.raises(ValueError, match="has no 'net.slice1.0.bias'"):
        adversarial.load_lpips(str(bad))
