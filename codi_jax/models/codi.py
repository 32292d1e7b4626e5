"""The CoDi model: the image/video, text and audio diffusion UNets and their joint forward.

    model = build("full")              # or build({"unet_image": "full", "unet_text": None, ...})
    eps = model.apply(params, {"image": x_img, "audio": x_aud}, t, context, wiring="others")
    # -> {"image": eps_img, "audio": eps_aud}

Modalities: "image" [B,H,W,4] and "video" [B,F,H,W,4] (both through `unet_image`),
"text" [B,768] (`unet_text`), "audio" [B,T,M,8] (`unet_audio`). Any subset of the three
UNets may be configured; the parameter tree has one branch per UNet under its official
name (`unet_image/...`), so released weights map branch by branch.

One call generates any set of output modalities with one shared timestep t [B] and one
prompt context [B, L, D] (`mix_conditions` builds it from several inputs):
- one output: the plain UNet; no environment encoder, no connectors;
- two or more: every output i gets v_i = V_i(x_i, t), its UNet's pooled, L2-normalised
  environment encoding, and its joint connectors read a context built from those:
    wiring="own"     v_i itself, as the released code does (`UNetModelCoDi.forward` passes
                     h_con[i]); use it with released weights. No information crosses between
                     modalities: eps_i depends on x_i only.
    wiring="others"  the mean of v_j over the other outputs j != i, as the paper describes
                     (UNet A attends to V_B(z_B)); the default for training our own, since it
                     is what couples the outputs.
  The original walks the UNets' blocks in lock-step, but V depends on x_t only, so computing
  every v first and then each UNet on its own is the same function.
`aliased_skip=True` reproduces the released wrapper's first-skip aliasing (see the UNets).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.models import unet as unet2d_lib
from codi_jax.models import unet_text as unet_text_lib
from codi_jax.models.catalogue import MODALITIES, UNET_OF
from codi_jax.models.unet import UNet2D
from codi_jax.models.unet_text import UNetText

LATENT_RANK = {"image": 4, "video": 5, "text": 2, "audio": 4}
_LAYOUT = {"image": "[B, H, W, C]", "video": "[B, F, H, W, C]", "text": "[B, Z]", "audio": "[B, T, M, C]"}
WIRINGS = ("own", "others")

CONFIGS: dict[str, dict[str, Any]] = {
    # The released CoDi diffusers: 1,772,784,247 + 2,048,385,408 + 431,309,032 parameters.
    "full": dict(unet_image="full", unet_text="full", unet_audio="full_audio"),
    "tiny": dict(unet_image="tiny", unet_text="tiny", unet_audio="tiny_audio"),
}


def mix_conditions(conds: Mapping[str, Any], weights: Mapping[str, float]):
    """sum_j w_j / sum(w) * cond_j over the conditioning tokens conds {type: [B, 1, D]}.

    As the original: the weights are normalised in float64, each product is taken in the
    conditions' dtype and summed in the order of `conds`, and the result is not re-normalised
    (a mix of unit vectors is shorter than 1).
    """
    if not conds:
        raise ValueError("mix_conditions needs at least one condition")
    missing = [k for k in conds if k not in weights]
    if missing:
        raise ValueError(f"no mixing weight for condition type {missing[0]!r}; weights are given for "
                         f"{sorted(weights)}")
    shapes = {k: tuple(jnp.shape(c)) for k, c in conds.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"conditions must share one shape [B, 1, D], got {shapes}")
    w = np.asarray([weights[k] for k in conds], np.float64)
    if w.sum() == 0:
        raise ValueError(f"mixing weights {dict(weights)} sum to zero for conditions {list(conds)}")
    w = w / w.sum()
    mixed = None
    for cond, wj in zip(conds.values(), w):
        cond = jnp.asarray(cond)
        term = cond * jnp.asarray(wj, cond.dtype)
        mixed = term if mixed is None else mixed + term
    return mixed


class CoDi(nn.Module):
    """The three CoDi UNets (any may be None) and the any-to-any forward; see the module docstring."""
    unet_image: UNet2D | None = None
    unet_text: UNetText | None = None
    unet_audio: UNet2D | None = None

    def _unet(self, modality: str):
        if modality not in UNET_OF:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        unet = getattr(self, UNET_OF[modality])
        if unet is None:
            raise ValueError(f"modality {modality!r} needs {UNET_OF[modality]}, which this model does not have")
        return unet

    def _check(self, latents, wiring):
        if wiring not in WIRINGS:
            raise ValueError(f"unknown wiring {wiring!r}; expected one of {WIRINGS}")
        if not isinstance(latents, Mapping) or not latents:
            raise ValueError(f"latents must be a non-empty dict {{modality: x}} over {MODALITIES}")
        for modality, x in latents.items():
            self._unet(modality)
            if jnp.ndim(x) != LATENT_RANK[modality]:
                raise ValueError(f"{modality} latent must be {_LAYOUT[modality]}, got shape {jnp.shape(x)}")
        batches = {m: jnp.shape(x)[0] for m, x in latents.items()}
        if len(set(batches.values())) != 1:
            raise ValueError(f"latents have different batch sizes {batches}; all outputs share one batch")

    def __call__(self, latents: Mapping[str, Any], t, context, *, wiring: str = "own", aliased_skip: bool = False):
        """{modality: eps} with each eps shaped like its latent (see the module docstring)."""
        self._check(latents, wiring)
        if len(latents) == 1:
            (modality, x), = latents.items()
            return {modality: self._unet(modality)(x, t, context, aliased_skip=aliased_skip)}
        env = {m: self._unet(m).env_encode(x, t) for m, x in latents.items()}
        if wiring == "others":
            dims = {m: v.shape[-1] for m, v in env.items()}
            if len(set(dims.values())) != 1:
                raise ValueError(f"wiring 'others' needs one connector_dim across the UNets, got {dims}")
        eps = {}
        for m, x in latents.items():
            if wiring == "own":
                joint_context = env[m]
            else:
                others = [v for j, v in env.items() if j != m]
                joint_context = sum(others[1:], others[0]) / len(others)
            eps[m] = self._unet(m)(x, t, context, joint_context=joint_context, aliased_skip=aliased_skip)
        return eps


def _resolve(builder, variant, overrides):
    if variant is None or isinstance(variant, nn.Module):
        return variant
    return builder(variant, **overrides)


def build(variant: str | dict, **overrides) -> CoDi:
    """CoDi from a preset name in CONFIGS or a dict {unet_image: ..., unet_text: ..., unet_audio: ...} whose
    values are UNet presets (names or kwargs dicts), built modules, or None (not configured). Overrides
    (dtype, remat_policy, attn_impl) go to every UNet built here."""
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown CoDi variant {variant!r}; expected one of {sorted(CONFIGS)}")
        variant = CONFIGS[variant]
    unknown = set(variant) - {"unet_image", "unet_text", "unet_audio"}
    if unknown:
        raise ValueError(f"unknown CoDi members {sorted(unknown)}; expected unet_image, unet_text, unet_audio")
    return CoDi(unet_image=_resolve(unet2d_lib.build, variant.get("unet_image"), overrides),
                unet_text=_resolve(unet_text_lib.build, variant.get("unet_text"), overrides),
                unet_audio=_resolve(unet2d_lib.build, variant.get("unet_audio"), overrides))


def example_inputs(model: CoDi, batch: int = 1, seed: int = 0):
    """(latents, t, context) covering every configured UNet at its smallest valid size, for `init` and
    `jax.eval_shape`. Several latents, so the joint path creates V and the connectors too; video where
    unet_image has temporal modules, so those are created as well. Random, so V's L2 norm is finite."""
    keys = iter(jax.random.split(jax.random.key(seed), 4))
    latents, context_dim = {}, None
    for modality, name in (("video", "unet_image"), ("text", "unet_text"), ("audio", "unet_audio")):
        unet = getattr(model, name)
        if unet is None:
            continue
        context_dim = unet.context_dim
        if modality == "text":
            shape = (batch, unet.in_channels)
        else:
            side = 2 ** (len(unet.channel_mult) - 1)
            shape = (batch, side, side, unet.in_channels)
            if modality == "video" and unet.video:
                shape = (batch, 2) + shape[1:]
            elif modality == "video":
                modality = "image"
        latents[modality] = jax.random.normal(next(keys), shape, jnp.float32)
    if not latents:
        raise ValueError("the CoDi model has no UNet configured")
    context = jax.random.normal(next(keys), (batch, 1, context_dim), jnp.float32)
    return latents, jnp.full((batch,), 500, jnp.int32), context


def param_groups(params) -> dict[str, str]:
    """{parameter path: group} over the whole model ('unet_text/env/...' -> 'env'): the UNets' groups
    (base, temporal, env, joint) applied below each UNet's branch."""
    params = params.get("params", params) if isinstance(params, Mapping) else params
    groups = {}
    for name, branch in params.items():
        for path, group in unet2d_lib.param_groups(branch).items():
            groups[f"{name}/{path}"] = group
    return groups
