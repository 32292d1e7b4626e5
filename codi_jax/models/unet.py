"""CoDi's image / video / audio diffusion UNet (`UNetModel2D`), environment encoder V and joint connectors.

One module serves three released networks:
  "full"        the image UNet, SD-1.5 layout, with the video architecture (a
                SpatioTemporalAttention after every ResBlock) -> image [B,H,W,4] and video [B,F,H,W,4]
  "full_audio"  the audio UNet on the mel-VAE latent [B,T,M,8], no temporal modules
Both carry CoDi's environment encoder V (`env`, official `connecters_out`) and joint
cross-attention connectors (`input_connectors_<i>` / `output_connectors_<i>`, official
`input/output_block_connecters_in`) that read V's pooled output during joint generation.

    model = build("full")
    eps = model.apply(params, x, t, context)                       # single-modality generation
    v = model.apply(params, x, t, method=model.env_encode)         # [B, 1, connector_dim]
    eps = model.apply(params, x, t, context, joint_context=v', aliased_skip=True)  # joint generation

A 5-D input [B, F, H, W, C] switches to video: frames fold into the batch (b-major) for
every ResBlock, conv, GroupNorm, SpatialTransformer and resampler, the time embedding and
contexts are repeated per frame, and the temporal modules mix frames. Parameter groups for
freezing (`param_groups`): "base" (the SD-style UNet), "temporal" (main-path temporal
modules), "env" (V, its temporal modules included) and "joint" (the connectors).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.models import unet_common
from codi_jax.models.layers import (Downsample, GroupNorm32, ResBlock, SpatialTransformer, TimeEmbed,
                                    Upsample, conv)
from codi_jax.models.temporal import MAX_FRAMES, NORMS, SpatioTemporalAttention
from codi_jax.parallel.partitioning import with_constraint

_SD_LEVELS = dict(channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
                  attention_levels=(True, True, True, False), num_heads=8, context_dim=768,
                  joint=True, env_channel_mult=(1, 2, 4), env_num_res_blocks=(1, 1, 1),
                  connector_levels=(True, True, True, False), connector_dim=1280)

CONFIGS: dict[str, dict[str, Any]] = {
    # Released image+video UNet (openai_unet_2d): 1,772,784,247 parameters.
    "full": dict(in_channels=4, out_channels=4, model_channels=320, video=True, video_dim_scale_factor=4,
                 **_SD_LEVELS),
    # Released audio UNet (openai_unet_2d_audio): 431,309,032 parameters.
    "full_audio": dict(in_channels=8, out_channels=8, model_channels=192, video=False, **_SD_LEVELS),
    # CPU-sized, every feature on (video, V, connectors); 64 channels is the smallest width
    # whose V (starting at model_channels // 2) fits GroupNorm's 32 groups.
    "tiny": dict(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 1), num_res_blocks=(1, 1),
                 attention_levels=(True, False), num_heads=2, context_dim=32, video=True,
                 video_dim_scale_factor=4, joint=True, env_channel_mult=(1, 1), env_num_res_blocks=(1, 1),
                 connector_levels=(True, False), connector_dim=32),
    "tiny_audio": dict(in_channels=8, out_channels=8, model_channels=64, channel_mult=(1, 1),
                       num_res_blocks=(1, 1), attention_levels=(True, False), num_heads=2, context_dim=32,
                       video=False, joint=True, env_channel_mult=(1, 1), env_num_res_blocks=(1, 1),
                       connector_levels=(True, False), connector_dim=32),
}

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}

GROUPS = ("base", "temporal", "env", "joint")


def _fold(x):
    """[B, F, ...] -> [B*F, ...] (b-major), or x unchanged when it is not a video."""
    return x.reshape((-1,) + x.shape[2:])


def _repeat_frames(a, frames: int):
    return jnp.repeat(a, frames, axis=0)


# Every block's output is constrained by these names (the trainer's sharding_rules put the batch over data x fsdp),
# so XLA keeps activations split by example rather than gathering them next to fsdp-sharded kernels.
_IMAGE_AXES = ("batch", "height", "width", "act_embed")
_VIDEO_AXES = ("batch", "frames", "height", "width", "act_embed")


class UNetBlock(nn.Module):
    """One entry of the encoder / decoder (or a connector): [ResBlock] [temporal] [SpatialTransformer] [Down | Up].

    x is [N, H, W, C] or a video [B, F, H, W, C]; emb [B, E]; context [B, L, context_dim].
    """
    res_channels: int | None = None
    temporal: bool = False
    num_heads: int = 0  # 0: no SpatialTransformer
    context_dim: int = 0
    down: bool = False
    up: bool = False
    video_dim_scale_factor: int = 4
    attn_impl: str = "xla"
    temporal_norm: str = "frames"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, context):
        video = x.ndim == 5
        frames = x.shape[1] if video else 1
        h = _fold(x) if video else x
        if self.res_channels is not None:
            h = ResBlock(self.res_channels, 1e-5, self.dtype, name="res")(h, _repeat_frames(emb, frames))
        if self.temporal:
            sta = SpatioTemporalAttention(h.shape[-1], self.video_dim_scale_factor, self.attn_impl,
                                          norm=self.temporal_norm, dtype=self.dtype, name="temporal")
            h = _fold(sta(h.reshape((-1, frames) + h.shape[1:]))) if video else sta(h)
        if self.num_heads:
            c = h.shape[-1]
            h = SpatialTransformer(c, self.num_heads, c // self.num_heads, self.context_dim, self.attn_impl,
                                   self.dtype, name="attn")(h, _repeat_frames(context, frames))
        if self.down:
            h = Downsample(h.shape[-1], self.dtype, name="down")(h)
        if self.up:
            h = Upsample(h.shape[-1], self.dtype, name="up")(h)
        if video:
            return with_constraint(h.reshape((-1, frames) + h.shape[1:]), _VIDEO_AXES)
        return with_constraint(h, _IMAGE_AXES)


class MiddleBlock(nn.Module):
    """ResBlock, [temporal], SpatialTransformer, ResBlock, [temporal]."""
    temporal: bool
    num_heads: int
    context_dim: int
    video_dim_scale_factor: int = 4
    attn_impl: str = "xla"
    temporal_norm: str = "frames"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, context):
        c = x.shape[-1]
        kw = dict(video_dim_scale_factor=self.video_dim_scale_factor, attn_impl=self.attn_impl,
                  temporal_norm=self.temporal_norm, dtype=self.dtype)
        h = UNetBlock(c, self.temporal, name="block_0", **kw)(x, emb, context)
        h = UNetBlock(None, False, self.num_heads, self.context_dim, name="block_1", **kw)(h, emb, context)
        return UNetBlock(c, self.temporal, name="block_2", **kw)(h, emb, context)


class EnvEncoder(nn.Module):
    """CoDi's environment encoder V: conv, [Res(+temporal)] per level with Down between levels,
    GN-SiLU-conv head, mean over positions (and frames), L2-normalised with no eps -> [B, 1, out_channels]."""
    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: Sequence[int]
    out_channels: int
    video: bool
    video_dim_scale_factor: int = 4
    remat_policy: str = "none"
    attn_impl: str = "xla"
    temporal_norm: str = "frames"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        block = _block_cls(self.remat_policy)
        kw = dict(video_dim_scale_factor=self.video_dim_scale_factor, attn_impl=self.attn_impl,
                  temporal_norm=self.temporal_norm, dtype=self.dtype)
        video = x.ndim == 5
        frames = x.shape[1] if video else 1
        unfold = lambda a: a.reshape((-1, frames) + a.shape[1:]) if video else a
        fold = lambda a: _fold(a) if video else a
        h = unfold(conv(self.model_channels // 2, 3, dtype=self.dtype, name="blocks_0")(fold(x)))
        index = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks[level]):
                h = block(self.model_channels * mult, self.video, name=f"blocks_{index}", **kw)(h, emb, None)
                index += 1
            if level != len(self.channel_mult) - 1:
                h = block(down=True, name=f"blocks_{index}", **kw)(h, emb, None)
                index += 1
        h = nn.silu(GroupNorm32(1e-5, self.dtype, name="out_norm")(fold(h)))
        h = unfold(conv(self.out_channels, 3, dtype=self.dtype, name="out_conv")(h)).astype(jnp.float32)
        pooled = jnp.mean(h.reshape(h.shape[0], -1, h.shape[-1]), axis=1, keepdims=True)
        return pooled / jnp.sqrt(jnp.sum(jnp.square(pooled), axis=-1, keepdims=True))


def _block_cls(remat_policy: str):
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")
    if remat_policy == "none":
        return UNetBlock
    return nn.remat(UNetBlock, policy=REMAT_POLICIES[remat_policy])


class UNet2D(nn.Module):
    """CoDi `UNetModel2D` (image, video with `video=True`, audio), channels-last.

    Constructor fields mirror the official arguments (see `from_official`): `num_res_blocks`
    = num_noattn_blocks, `attention_levels` = with_attn, `joint` = init_connector (builds V and
    the connectors), `env_channel_mult` / `env_num_res_blocks` = channel_mult_connector /
    num_noattn_blocks_connector, `connector_levels` = with_connector, `connector_dim` =
    connector_output_channel. Heads: `num_heads` of width C // num_heads in every
    SpatialTransformer; the temporal modules use 8 heads of width C // video_dim_scale_factor.
    """
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: Sequence[int] = (2, 2, 2, 2)
    attention_levels: Sequence[bool] = (True, True, True, False)
    num_heads: int = 8
    context_dim: int = 768
    video: bool = False
    video_dim_scale_factor: int = 4
    joint: bool = False
    env_channel_mult: Sequence[int] = (1, 2, 4)
    env_num_res_blocks: Sequence[int] = (1, 1, 1)
    connector_levels: Sequence[bool] = (True, True, True, False)
    connector_dim: int = 1280
    dtype: Any = jnp.float32
    remat_policy: str = "none"
    attn_impl: str = "xla"
    temporal_norm: str = "frames"  # the temporal attention's input norm: "frames" (released) or "channels"

    def setup(self):
        levels = len(self.channel_mult)
        for name in ("num_res_blocks", "attention_levels") + (("connector_levels",) if self.joint else ()):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries; expected one per level ({levels})")
        if self.joint and len(self.env_num_res_blocks) != len(self.env_channel_mult):
            raise ValueError(f"env_num_res_blocks has {len(self.env_num_res_blocks)} entries; expected "
                             f"{len(self.env_channel_mult)} (one per env_channel_mult level)")
        block = _block_cls(self.remat_policy)
        mc = self.model_channels
        kw = dict(video_dim_scale_factor=self.video_dim_scale_factor, attn_impl=self.attn_impl,
                  temporal_norm=self.temporal_norm, dtype=self.dtype)
        connector = lambda: block(num_heads=self.num_heads, context_dim=self.connector_dim, **kw)

        self.time_embed = TimeEmbed(mc, 4 * mc, self.dtype)
        inputs: list[Any] = [conv(mc, 3, dtype=self.dtype)]
        input_connectors: dict[str, Any] = {}
        skip_channels = [mc]
        for level, mult in enumerate(self.channel_mult):
            heads = self.num_heads if self.attention_levels[level] else 0
            for _ in range(self.num_res_blocks[level]):
                if self.joint and self.connector_levels[level]:
                    input_connectors[str(len(inputs))] = connector()
                inputs.append(block(mc * mult, self.video, heads, self.context_dim, **kw))
                skip_channels.append(mc * mult)
            if level != levels - 1:
                inputs.append(block(down=True, **kw))
                skip_channels.append(mc * mult)
        self.input_blocks = inputs
        self.input_connectors = input_connectors
        self.middle_block = MiddleBlock(self.video, self.num_heads, self.context_dim, **kw)

        outputs, output_connectors = [], {}
        for level in reversed(range(levels)):
            heads = self.num_heads if self.attention_levels[level] else 0
            for j in range(self.num_res_blocks[level] + 1):
                skip_channels.pop()
                up = level > 0 and j == self.num_res_blocks[level]
                if self.joint and self.connector_levels[level]:
                    output_connectors[str(len(outputs))] = connector()
                outputs.append(block(mc * self.channel_mult[level], self.video, heads, self.context_dim, up=up, **kw))
        self.output_blocks = outputs
        self.output_connectors = output_connectors
        self.out_norm = GroupNorm32(1e-5, self.dtype)
        self.out_conv = conv(self.out_channels, 3, zero_init=True, dtype=self.dtype)
        if self.joint:
            self.env = EnvEncoder(mc, tuple(self.env_channel_mult), tuple(self.env_num_res_blocks),
                                  self.connector_dim, self.video, self.video_dim_scale_factor, self.remat_policy,
                                  self.attn_impl, self.temporal_norm, self.dtype)

    def _check_x(self, x, t):
        if x.ndim not in (4, 5) or (x.ndim == 5 and not self.video):
            shapes = "[B, H, W, C]" + (" or [B, F, H, W, C]" if self.video else "")
            raise ValueError(f"UNet2D expects x {shapes}, got shape {x.shape}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet2D expects {self.in_channels} input channels, got {x.shape[-1]}")
        if x.ndim == 5 and x.shape[1] > MAX_FRAMES:
            raise ValueError(f"video has {x.shape[1]} frames; at most {MAX_FRAMES} are supported")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[-3] % factor or x.shape[-2] % factor:
            raise ValueError(f"spatial size {x.shape[-3:-1]} must be divisible by {factor} "
                             f"({len(self.channel_mult)} levels)")
        return unet_common.check_timesteps(x, t)

    def _frames(self, fn, h):
        if h.ndim == 5:
            out = fn(_fold(h))
            return out.reshape(h.shape[:2] + out.shape[1:])
        return fn(h)

    def __call__(self, x, t, context, joint_context=None, aliased_skip: bool = False):
        """eps with the shape of x. joint_context None skips the connectors (single-output generation);
        aliased_skip reproduces the released wrapper, whose first decoder block sees cat([mid, mid])."""
        t = self._check_x(x, t)
        emb = self.time_embed(t)
        joint_context = unet_common.check_contexts(self, x, emb, context, joint_context)
        h = unet_common.walk(self, self._frames(self.input_blocks[0], x), emb, context, joint_context, aliased_skip)
        h = self._frames(lambda a: self.out_conv(nn.silu(self.out_norm(a))), h)
        return h.astype(jnp.float32)

    def env_encode(self, x, t):
        """V(x) with this UNet's time embedding: [B, 1, connector_dim], unit L2 norm."""
        return unet_common.env_encode(self, x, t)


def build(variant: str | dict, **overrides) -> UNet2D:
    """UNet2D from a preset name in CONFIGS or an explicit kwargs dict; overrides (dtype, remat_policy,
    attn_impl, ...) win."""
    kwargs = {**unet_common.preset(variant, CONFIGS, "UNet2D"), **overrides}
    if kwargs.get("temporal_norm", "frames") not in NORMS:  # checked here so a bad config fails before init
        raise ValueError(f"unknown temporal_norm {kwargs['temporal_norm']!r}; expected one of {sorted(NORMS)}")
    return UNet2D(**kwargs)


_OFFICIAL_NAMES = {
    "input_channels": "in_channels", "output_channels": "out_channels", "model_channels": "model_channels",
    "channel_mult": "channel_mult", "num_noattn_blocks": "num_res_blocks", "with_attn": "attention_levels",
    "num_heads": "num_heads", "context_dim": "context_dim", "use_video_architecture": "video",
    "video_dim_scale_factor": "video_dim_scale_factor", "init_connector": "joint",
    "channel_mult_connector": "env_channel_mult", "num_noattn_blocks_connector": "env_num_res_blocks",
    "with_connector": "connector_levels", "connector_output_channel": "connector_dim",
}


def from_official(args: dict, **overrides) -> UNet2D:
    """UNet2D from the official `UNetModel2D` constructor arguments (config.json / yaml `args`)."""
    kwargs = {"video": False, "joint": True, **unet_common.official_kwargs(args, _OFFICIAL_NAMES, "UNetModel2D")}
    return build(kwargs, **overrides)


def param_group(path: str) -> str:
    """Group of one parameter path ('/'-joined tree keys): base, temporal, env or joint."""
    top = path.split("/", 1)[0]
    if top == "env":
        return "env"
    if top.startswith(("input_connectors_", "output_connectors_")):
        return "joint"
    if re.search(r"(^|/)temporal(/|$)", path):
        return "temporal"
    return "base"


def _path_str(path) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    return "/".join(keys[1:] if keys and keys[0] == "params" else keys)


def _paths(params) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    return [(_path_str(path), leaf) for path, leaf in leaves]


def param_groups(params) -> dict[str, str]:
    """{parameter path: group} for a UNet2D params tree (with or without the 'params' level; boxed or not)."""
    return {path: param_group(path) for path, _ in _paths(params)}


def group_sizes(params) -> dict[str, int]:
    """Number of parameters per group (shapes suffice: works on jax.eval_shape output)."""
    sizes = dict.fromkeys(GROUPS, 0)
    for path, leaf in _paths(params):
        sizes[param_group(path)] += int(np.prod(leaf.shape))
    return sizes


def group_mask(params, groups: Sequence[str]):
    """Boolean tree, True where a parameter belongs to one of `groups` (for optax.masked / multi_transform)."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown parameter groups {sorted(unknown)}; expected a subset of {GROUPS}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))
    return jax.tree_util.tree_unflatten(treedef, [param_group(_path_str(path)) in groups for path, _ in leaves])
