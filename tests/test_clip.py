"""CLIP (text, image, video) and its preprocessing: golden parity, full size, sharding, quirks, HF loading."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from codi_jax.convert import clip as clip_convert
from codi_jax.convert import golden, hf_clip
from codi_jax.models import clip as clip_model
from codi_jax.models import clip_preprocess
from codi_jax.parallel.partitioning import tree_shardings

CLIP = clip_model.CLIP
_COMPILED = {}


def run(model, params, method, *args):
    """model.apply through one cached jit per (model, method): compiling beats op-by-op dispatch here."""
    key = (model, method)
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))
    return _COMPILED[key](params, *args)


@pytest.fixture(scope="module")
def tiny():
    model = clip_model.build("tiny")
    params = jax.jit(model.init)(jax.random.key(0), *clip_model.init_inputs(model))["params"]
    return model, nn.meta.unbox(params)


def _pixels(model, *lead, seed=0):
    shape = lead + (model.image_size, model.image_size, 3)
    return jax.random.normal(jax.random.key(seed), shape)


def test_golden_clip(goldens_dir):
    rows = golden.check(goldens_dir / "clip")
    names = {r[1] for r in rows}
    for tower in ("image", "video"):
        assert {f"{tower}_pixel_values", f"{tower}_last_hidden_state", f"{tower}_pooled", f"{tower}_embed"} <= names
    assert {"text_last_hidden_state", "text_pooled", "text_embed"} <= names
    failed = [r for r in rows if not r[4]]
    assert not failed, failed


def test_full_parameter_count():
    params = nn.meta.unbox(clip_convert.abstract_params(clip_model.build("full")))
    count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
    assert count(params) == 737_647_217
    assert count(params["text_model"]) == 123_060_480
    assert count(params["vision_model"]) == 613_210_480
    temporal = [l["temporal_self_attn"] for k, l in params["vision_model"].items() if k.startswith("layers_")]
    assert len(temporal) == 24 and count(temporal) == 310_030_704
    assert params["vision_model"]["layers_0"]["temporal_self_attn"]["ff"]["norm_g"].shape == (2730,)


def test_fsdp_sharding_full_size():
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    abstract = clip_convert.abstract_params(clip_model.build("full"))
    shardings = tree_shardings(abstract, mesh)
    shapes = nn.meta.unbox(abstract)
    flat_s = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
    big_replicated = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]
                      if x.size * 4 > 2 ** 20 and flat_s[p].is_fully_replicated]
    assert not big_replicated, big_replicated
    vision = shardings["vision_model"]
    assert vision["layers_3"]["self_attn"]["q_proj"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp")
    assert vision["patch_embedding"]["kernel"].spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert shardings["text_model"]["token_embedding"]["embedding"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert vision["layers_0"]["temporal_self_attn"]["ff"]["proj_out"]["kernel"].spec == \
        jax.sharding.PartitionSpec(None, "fsdp")


def test_tiny_shapes_and_unit_norm(tiny):
    model, params = tiny
    ids = jnp.array([[62, 5, 9, 63] + [63] * 12, [62, 63] + [63] * 14])
    apply = lambda method, *a: run(model, params, method, *a)
    outs = [apply(CLIP.encode_text, ids), apply(CLIP.encode_image, _pixels(model, 2)),
            apply(CLIP.encode_video, _pixels(model, 2, 3))]
    for out in outs:
        assert out.shape == (2, 1, model.projection_dim)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    hidden, pooled = apply(CLIP.vision_features, _pixels(model, 2, 3))
    assert hidden.shape == (2, (model.image_size // model.patch_size) ** 2 + 1, model.vision_width)


def test_text_pools_first_eos_with_causal_mask(tiny):
    model, params = tiny
    ids = jnp.array([[62, 7, 63, 63, 63, 63], [62, 7, 8, 9, 63, 63]])
    hidden, pooled = run(model, params, CLIP.text_features, ids)
    np.testing.assert_array_equal(pooled, hidden[jnp.arange(2), jnp.array([2, 4])])
    # Causal: tokens after position 2 cannot change row 0's hidden states up to position 2.
    changed = ids.at[0, 3:].set(11)
    hidden2, _ = run(model, params, CLIP.text_features, changed)
    np.testing.assert_allclose(hidden2[0, :3], hidden[0, :3], atol=1e-6)


def test_one_frame_video_is_the_image_path(tiny):
    model, params = tiny
    x = _pixels(model, 2)
    image = run(model, params, CLIP.encode_image, x)
    video = run(model, params, CLIP.encode_video, x[:, None])
    np.testing.assert_array_equal(image, video)


def test_temporal_block_is_identity_at_init(tiny):
    model, params = tiny
    temporal = params["vision_model"]["layers_0"]["temporal_self_attn"]
    assert not np.any(temporal["temporal_attn"]["to_out"]["kernel"])
    assert not np.any(temporal["ff"]["proj_out"]["kernel"])
    x = _pixels(model, 2)
    image = run(model, params, CLIP.encode_image, x)
    video = run(model, params, CLIP.encode_video, jnp.repeat(x[:, None], 3, axis=1))
    np.testing.assert_allclose(video, image, atol=1e-6)


def test_frame_axis_norm_floors_the_variance():
    x = jnp.stack([jnp.full((4,), 3.0), jnp.arange(4.0)], axis=0)[None]  # [1, frames=2, C=4]
    out = clip_model._floored_norm(x, axis=1, scale=jnp.ones(4))
    # Per channel over 2 frames: values (3, c) -> +-(3 - c)/2 / sqrt(max(((3 - c)/2)^2, 1e-5)).
    diff = (3.0 - np.arange(4.0)) / 2
    expected = diff / np.sqrt(np.maximum(diff ** 2, 1e-5))
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], -expected, rtol=1e-6)


def test_rel_pos_bias_input_is_log_signed_distance():
    bias = clip_model.TemporalRelPosBias(hidden=1, heads=1)
    unit = {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros((1,))}
    out = bias.apply({"params": {"net_0": unit, "net_1": unit, "net_2": unit}}, 4)
    rel = np.arange(4)[:, None] - np.arange(4)[None, :]
    silu = lambda v: v / (1 + np.exp(-v))
    np.testing.assert_allclose(out[0], silu(silu(np.sign(rel) * np.log(np.abs(rel) + 1))), rtol=1e-6)


def test_bad_inputs(tiny):
    model, params = tiny
    apply = lambda method, x: run(model, params, method, x)
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        apply(CLIP.encode_text, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="rank 2"):
        apply(CLIP.encode_text, jnp.zeros((17,), jnp.int32))
    with pytest.raises(ValueError, match=r"frames of shape \(28, 28, 3\)"):
        apply(CLIP.encode_image, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="0 frames"):
        apply(CLIP.encode_video, jnp.zeros((1, 0, 28, 28, 3)))
    with pytest.raises(ValueError, match=r"\[B, F, S, S, 3\]"):
        apply(CLIP.encode_video, jnp.zeros((1, 28, 28, 3)))
    with pytest.raises(ValueError, match="3 colour channels"):
        clip_preprocess.preprocess_images(np.zeros((1, 30, 30, 4)))
    with pytest.raises(ValueError, match="rank 5"):
        clip_preprocess.preprocess_videos(np.zeros((1, 30, 30, 3)))


def test_preprocess_mid_gray_and_shapes():
    out = clip_preprocess.preprocess_images(np.zeros((2, 300, 400, 3), np.float32), 224)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    # 0 -> 0.5 -> floor(127.5) = 127 everywhere; bicubic keeps a constant image constant.
    expected = (np.float32(127 / 255) - clip_preprocess.OPENAI_MEAN) / clip_preprocess.OPENAI_STD
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6)
    assert clip_preprocess.resize_shape(300, 400, 224) == (224, 298)
    assert clip_preprocess.resize_shape(36, 44, 28) == (28, 34)


def test_preprocess_video_is_frame_by_frame():
    video = np.random.default_rng(0).uniform(-1, 1, (1, 3, 40, 30, 3)).astype(np.float32)
    frames = clip_preprocess.preprocess_videos(video, 28)
    assert frames.shape == (1, 3, 28, 28, 3)
    np.testing.assert_array_equal(frames[0], clip_preprocess.preprocess_images(video[0], 28))


# --- Hugging Face loading ------------------------------------------------------------------------------

_TINY_HF = {"text_config": dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=12, hidden_act="quick_gelu"),
            "vision_config": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=14, patch_size=7, hidden_act="quick_gelu"),
            "projection_dim": 8}


def _hf_shapes(cfg):
    """Every key of an HF CLIPModel state dict with its shape (weights [out, in], conv OIHW)."""
    t, v, d = cfg["text_config"], cfg["vision_config"], cfg["projection_dim"]
    shapes = {"logit_scale": (), "text_projection.weight": (d, t["hidden_size"]),
              "visual_projection.weight": (d, v["hidden_size"]),
              "text_model.embeddings.token_embedding.weight": (t["vocab_size"], t["hidden_size"]),
              "text_model.embeddings.position_embedding.weight": (t["max_position_embeddings"], t["hidden_size"]),
              "vision_model.embeddings.class_embedding": (v["hidden_size"],),
              "vision_model.embeddings.patch_embedding.weight": (v["hidden_size"], 3, v["patch_size"], v["patch_size"]),
              "vision_model.embeddings.position_embedding.weight": ((v["image_size"] // v["patch_size"]) ** 2 + 1,
                                                                     v["hidden_size"])}
    norms = ["text_model.final_layer_norm", "vision_model.pre_layrnorm", "vision_model.post_layernorm"]
    for tower, c in (("text_model", t), ("vision_model", v)):
        w, m = c["hidden_size"], c["intermediate_size"]
        for i in range(c["num_hidden_layers"]):
            p = f"{tower}.encoder.layers.{i}"
            norms += [f"{p}.layer_norm1", f"{p}.layer_norm2"]
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[f"{p}.self_attn.{proj}.weight"], shapes[f"{p}.self_attn.{proj}.bias"] = (w, w), (w,)
            shapes.update({f"{p}.mlp.fc1.weight": (m, w), f"{p}.mlp.fc1.bias": (m,),
                           f"{p}.mlp.fc2.weight": (w, m), f"{p}.mlp.fc2.bias": (w,)})
    for n in norms:
        width = t["hidden_size"] if n.startswith("text") else v["hidden_size"]
        shapes[f"{n}.weight"], shapes[f"{n}.bias"] = (width,), (width,)
    return shapes


def _write_hf(directory, cfg, sd):
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    save_file({k: np.array(v, order="C") for k, v in sd.items()}, str(directory / "model.safetensors"))
    return directory


def test_hf_loading_from_local_files(tmp_path):
    rng = np.random.default_rng(0)
    sd = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in _hf_shapes(_TINY_HF).items()}
    sd["text_model.embeddings.position_ids"] = np.arange(12, dtype=np.int64)[None]
    model, params = hf_clip.load_hf_clip(_write_hf(tmp_path / "clip", _TINY_HF, sd))
    assert (model.text_width, model.vision_layers, model.projection_dim) == (16, 2, 8)
    np.testing.assert_array_equal(params["text_projection"]["kernel"], sd["text_projection.weight"].T)
    np.testing.assert_array_equal(params["vision_model"]["patch_embedding"]["kernel"],
                                  sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
    temporal = params["vision_model"]["layers_1"]["temporal_self_attn"]
    assert not np.any(temporal["temporal_attn"]["to_out"]["kernel"])
    x = _pixels(model, 2)
    image = run(model, params, CLIP.encode_image, x)
    video = run(model, params, CLIP.encode_video, jnp.repeat(x[:, None], 4, axis=1))
    np.testing.assert_allclose(video, image, atol=1e-6)
    del sd["visual_projection.weight"]
    with pytest.raises(ValueError, match="visual_projection.weight"):
        hf_clip.load_hf_clip(_write_hf(tmp_path / "broken", _TINY_HF, sd))


def test_hf_loading_reproduces_golden_text_and_image(goldens_dir, tmp_path):
    fixture = goldens_dir / "clip"
    config = json.loads((fixture / "config.json").read_text())["constructor"]["CLIPConfig"]
    hf_config = {"text_config": config["text_config_dict"], "vision_config": config["vision_config_dict"],
                 "projection_dim": config["projection_dim"]}
    sd = {k[len("model."):]: v for k, v in load_file(str(fixture / "params.safetensors")).items()
          if "temporal_self_attn" not in k}
    model, params = hf_clip.load_hf_clip(_write_hf(tmp_path / "clip", hf_config, sd))
    io = load_file(str(fixture / "io.safetensors"))
    text = run(model, params, CLIP.encode_text, io["text_input_ids"])
    image = run(model, params, CLIP.encode_image, io["image_pixel_values"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(text, io["text_embed"], atol=1e-5)
    np.testing.assert_allclose(image, io["image_embed"], atol=1e-5)


def test_hf_repo_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    rng = np.random.default_rng(1)
    local = _write_hf(tmp_path / "snap", _TINY_HF,
                      {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in _hf_shapes(_TINY_HF).items()})
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model, _ = hf_clip.load_hf_clip("someone/tiny-clip", revision="main")
    assert calls and calls[0][:2] == ("someone/tiny-clip", "main") and "model.safetensors" in calls[0][2]
    assert model.vision_width == 16
    with pytest.raises(ValueError, match="neither a directory"):
        hf_clip.load_hf_clip(tmp_path / "not" / "there")


def test_init_on_images_creates_the_temporal_weights_too():
    model = clip_model.build("tiny")
    ids, video = clip_model.init_inputs(model)
    on_video = jax.eval_shape(model.init, jax.random.key(0), ids, video)
    on_images = jax.eval_shape(model.init, jax.random.key(0), ids, video[:, 0])
    assert jax.tree.structure(on_images) == jax.tree.structure(on_video)
