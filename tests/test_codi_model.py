"""The CoDi model: golden parity with the released wrapper, sizes, wiring, condition mixing, errors."""
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from codi_jax.convert import golden, registry, unet_codi
from codi_jax.models import codi, unet_text


def random_params(model, *inputs, seed=0):
    """A params tree of the right structure filled from numpy (no init compile): norm scales 1 + 0.1 N,
    everything else 0.05 N, so no zero-initialised output layer hides an effect."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract, sep="/")
    return {"params": traverse_util.unflatten_dict({
        path: (1.0 if path.endswith("scale") else 0.0) + rng.normal(0.0, 0.1 if path.endswith("scale") else 0.05,
                                                                     leaf.shape).astype(np.float32)
        for path, leaf in flat.items()}, sep="/")}


@pytest.fixture(scope="module")
def image_text_audio():
    """Tiny CoDi without temporal layers (cheaper), every UNet present."""
    model = codi.build({"unet_image": {**codi.unet2d_lib.CONFIGS["tiny"], "video": False},
                        "unet_text": "tiny", "unet_audio": "tiny_audio"})
    latents, t, context = codi.example_inputs(model, batch=2)
    return model, random_params(model, latents, t, context), latents, t, context


def _run_cases(goldens_dir, names=None):
    fixture = goldens_dir / "unet_codi"
    config, meta, params, io = golden.load_fixture(fixture)
    if names is not None:
        config["forward"]["cases"] = [c for c in config["forward"]["cases"] if c["name"] in names]
    return unet_codi.run_golden(fixture, config, meta, params, io)


def _assert_parity(results):
    for name, (ours, ref) in results.items():
        err, rel = golden.compare(ours, ref)
        assert rel <= golden.REL_TOL, f"{name}: relative error {rel:.3e}"


def test_golden_parity_text_and_joint(goldens_dir):
    results = _run_cases(goldens_dir, {"single_text", "joint_image_text"})
    assert set(results) == {"single_text.out_text", "joint_image_text.out_image", "joint_image_text.out_text"}
    _assert_parity(results)


@pytest.mark.slow
def test_golden_parity_every_case(goldens_dir):
    results = _run_cases(goldens_dir)
    assert len(results) == 13
    _assert_parity(results)


def test_golden_parity_float64_reference(goldens_dir):
    """Set C (reference computed in float64): the checker runs it from its three params files, and every
    output passes at its own tolerance (video and text outputs carry float32 noise above REL_TOL)."""
    fixture = goldens_dir / "unet_codi_c"
    meta = json.loads((fixture / "meta.json").read_text())
    rows = golden.check(fixture)
    assert {r[1] for r in rows} == set(meta["outputs"]) == set(meta["float32_noise_per_output"])
    for _, name, err, rel, passed in rows:
        assert passed, f"{name}: relative error {rel:.3e} > tolerance {golden.tolerance(meta, name):.3e}"


def test_golden_tolerance_is_noise_multiple_where_recorded(tmp_path, monkeypatch, capsys):
    meta = {"component": "fake", "float32_noise_per_output": {"noisy": {"rel": 2e-4}, "quiet": {"rel": 1e-7}}}
    assert golden.tolerance(meta, "noisy") == pytest.approx(golden.NOISE_MULTIPLE * 2e-4)
    assert golden.tolerance(meta, "quiet") == golden.REL_TOL  # never below REL_TOL
    assert golden.tolerance(meta, "plain") == golden.REL_TOL  # nothing recorded
    assert golden.tolerance({}, "noisy") == golden.REL_TOL

    # The checker applies it per output: the same 5e-4 error passes where 2e-4 noise is recorded and fails elsewhere.
    from safetensors.numpy import save_file

    ref = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    (tmp_path / "config.json").write_text(json.dumps({}))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    save_file({n: ref for n in ("noisy", "quiet", "plain")}, str(tmp_path / "io.safetensors"))
    fake = registry.Component(name="fake", run_golden=lambda path, config, meta, params, io: {
        n: (io[n] + np.float32(5e-4), io[n]) for n in ("noisy", "quiet", "plain")})
    monkeypatch.setattr(registry, "get", lambda name: fake)
    assert {r[1]: r[4] for r in golden.check(tmp_path)} == {"noisy": True, "quiet": False, "plain": False}
    assert golden.main([str(tmp_path)]) == 1
    printed = {line.split()[1]: line.split()[4:] for line in capsys.readouterr().out.splitlines()}
    assert printed == {"noisy": [f"{golden.NOISE_MULTIPLE * 2e-4:.3e}", "PASS"],
                       "quiet": ["1.000e-04", "FAIL"], "plain": ["1.000e-04", "FAIL"]}


def test_full_size_counts_and_groups():
    model = codi.build("full")
    latents, t, context = jax.eval_shape(lambda: codi.example_inputs(model))
    assert set(latents) == {"video", "text", "audio"}
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), latents, t, context))["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    sizes = {}
    for path, group in codi.param_groups(params).items():
        key = (path.split("/")[0], group)
        sizes[key] = sizes.get(key, 0) + int(np.prod(flat[path].shape))
    assert sizes == {
        ("unet_image", "base"): 859_520_964, ("unet_image", "temporal"): 562_506_887,
        ("unet_image", "env"): 106_809_196, ("unet_image", "joint"): 243_947_200,
        ("unet_text", "base"): 1_708_848_448, ("unet_text", "env"): 95_589_760,
        ("unet_text", "joint"): 243_947_200,
        ("unet_audio", "base"): 314_154_056, ("unet_audio", "env"): 22_396_256,
        ("unet_audio", "joint"): 94_758_720,
    }


def test_own_wiring_keeps_modalities_independent(image_text_audio):
    model, params, latents, t, context = image_text_audio
    pair = {"image": latents["image"], "audio": latents["audio"]}
    base = model.apply(params, pair, t, context, wiring="own")
    moved = model.apply(params, {**pair, "audio": pair["audio"] + 1.0}, t, context, wiring="own")
    np.testing.assert_array_equal(moved["image"], base["image"])
    assert not np.allclose(moved["audio"], base["audio"])
    # the same modality with a different partner: identical too
    with_text = model.apply(params, {"image": latents["image"], "text": latents["text"]}, t, context, wiring="own")
    np.testing.assert_array_equal(with_text["image"], base["image"])


def test_others_wiring_couples_modalities(image_text_audio):
    model, params, latents, t, context = image_text_audio
    pair = {"image": latents["image"], "audio": latents["audio"]}
    base = model.apply(params, pair, t, context, wiring="others")
    moved = model.apply(params, {**pair, "audio": pair["audio"] + 1.0}, t, context, wiring="others")
    assert float(jnp.max(jnp.abs(moved["image"] - base["image"]))) > 1e-4
    own = model.apply(params, pair, t, context, wiring="own")
    assert not np.allclose(own["image"], base["image"])


def test_others_wiring_is_the_mean_of_the_other_encodings(image_text_audio):
    model, params, latents, t, context = image_text_audio
    eps = model.apply(params, latents, t, context, wiring="others")
    v = {m: model.apply(params, x, t, method=lambda mod, a, b, m=m: mod._unet(m).env_encode(a, b))
         for m, x in latents.items()}
    joint = (v["text"] + v["audio"]) / 2
    expected = model.apply(params, latents["image"], t, context, joint_context=joint,
                           method=lambda mod, *a, **k: mod.unet_image(*a, **k))
    np.testing.assert_allclose(eps["image"], expected, atol=1e-6)


def test_single_output_ignores_env_and_connectors(image_text_audio):
    model, params, latents, t, context = image_text_audio
    single = model.apply(params, {"text": latents["text"]}, t, context)
    flat = traverse_util.flatten_dict(params["params"], sep="/")
    groups = codi.param_groups(params)
    scrambled = {p: (v * -3.0 if groups[p] in ("env", "joint") else v) for p, v in flat.items()}
    again = model.apply({"params": traverse_util.unflatten_dict(scrambled, sep="/")}, {"text": latents["text"]},
                        t, context)
    np.testing.assert_array_equal(again["text"], single["text"])
    plain = model.apply(params, latents["text"], t, context, method=lambda mod, *a: mod.unet_text(*a))
    np.testing.assert_array_equal(single["text"], plain)


def test_output_shapes_follow_latents(image_text_audio):
    model, params, latents, t, context = image_text_audio
    eps = model.apply(params, latents, t, context, wiring="others", aliased_skip=True)
    assert list(eps) == list(latents)
    for m, x in latents.items():
        assert eps[m].shape == x.shape and eps[m].dtype == jnp.float32


def test_mix_conditions_numbers():
    a = jnp.asarray([[[0.6, 0.8]]], jnp.float32)
    b = jnp.asarray([[[1.0, 0.0]]], jnp.float32)
    mixed = codi.mix_conditions({"text": a, "audio": b}, {"text": 1, "audio": 3, "image": 1})
    np.testing.assert_array_equal(mixed, a * np.float32(0.25) + b * np.float32(0.75))
    np.testing.assert_allclose(mixed, [[[0.9, 0.2]]], rtol=1e-6)
    # float64 normalisation, each product in float32: 1/3 is rounded once, not summed in float64
    thirds = codi.mix_conditions({"text": a, "image": a, "audio": a}, {"text": 1, "image": 1, "audio": 1})
    w = np.float32(1.0 / 3.0)
    np.testing.assert_array_equal(thirds, (a * w + a * w) + a * w)
    # no re-normalisation: the mix of two orthogonal unit vectors has norm sqrt(1/2)
    c = jnp.asarray([[[0.0, 1.0]]], jnp.float32)
    half = codi.mix_conditions({"text": b, "image": c}, {"text": 1, "image": 1})
    np.testing.assert_allclose(jnp.linalg.norm(half), np.sqrt(0.5), rtol=1e-6)
    single = codi.mix_conditions({"video": a}, {"video": 2.0})
    np.testing.assert_array_equal(single, a)


def test_mix_conditions_errors():
    a = jnp.ones((2, 1, 4))
    with pytest.raises(ValueError, match="no mixing weight for condition type 'video'"):
        codi.mix_conditions({"video": a}, {"text": 1, "image": 1, "audio": 1})
    with pytest.raises(ValueError, match="share one shape"):
        codi.mix_conditions({"text": a, "image": jnp.ones((3, 1, 4))}, {"text": 1, "image": 1})
    with pytest.raises(ValueError, match="sum to zero"):
        codi.mix_conditions({"text": a, "image": a}, {"text": 1, "image": -1})
    with pytest.raises(ValueError, match="at least one condition"):
        codi.mix_conditions({}, {"text": 1})


def test_bad_inputs(image_text_audio):
    model, params, latents, t, context = image_text_audio
    cases = [
        ({"depth": latents["image"]}, {}, "unknown modality 'depth'"),
        ({"image": latents["image"], "text": latents["text"][:1]}, {}, "different batch sizes"),
        ({"text": jnp.ones((2, 17))}, {}, re.escape("UNetText expects x [B, 16], got shape (2, 17)")),
        ({"image": jnp.ones((2, 2, 2, 2, 4))}, {}, re.escape("image latent must be [B, H, W, C]")),
        ({"video": jnp.ones((2, 2, 2, 2, 4))}, {}, "UNet2D expects x"),
        ({}, {}, "non-empty dict"),
        ({"text": latents["text"]}, {"wiring": "paper"}, "unknown wiring 'paper'"),
    ]
    for lat, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.apply(params, lat, t, context, **kwargs)
    text_only = codi.build({"unet_text": "tiny"})
    text_params = {"params": {"unet_text": params["params"]["unet_text"]}}
    with pytest.raises(ValueError, match="modality 'audio' needs unet_audio, which this model does not have"):
        text_only.apply(text_params, {"audio": latents["audio"]}, t, context)
    with pytest.raises(ValueError, match="unknown CoDi variant 'huge'"):
        codi.build("huge")
    with pytest.raises(ValueError, match="unknown CoDi members"):
        codi.build({"unet_video": "tiny"})
    assert isinstance(text_only.unet_text, unet_text.UNetText)
