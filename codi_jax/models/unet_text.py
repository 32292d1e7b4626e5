"""CoDi's text diffusion UNet (`UNetModel0D_MultiDim`) over the 768-d Optimus latent, with V and joint connectors.

A Versatile-Diffusion style "0-D" UNet: the hidden state is a feature vector standing for an
official tensor [C, second_dim, 1]. Fully connected ResBlocks replace the convolutions, square
Linear layers replace down/up-sampling, and SpatialTransformers attend over the `second_dim`
positions as tokens of width C. Same interface as `codi_jax.models.unet.UNet2D`:

    model = build("full")
    eps = model.apply(params, x, t, context)                       # x [B, Z] -> eps [B, Z]
    v = model.apply(params, x, t, method=model.env_encode)         # [B, 1, connector_dim]
    eps = model.apply(params, x, t, context, joint_context=v', aliased_skip=True)  # joint generation

Layout. The hidden state is kept flat, [B, C * second_dim], in the official channel-major
order (index c * second_dim + s). The layers defined on that vector depend on the order:
the FC blocks' GroupNorm takes 32 groups of *consecutive* features (a group may span
several channels or part of one, mixing positions), and their dense kernels and biases are
indexed by it. Keeping the order makes the released weights load unpermuted; only the
transformers (tokens [B, second_dim, 1, C], channels-last like every other UNet) and the
output heads (GroupNorm over C) reshape.

Parameter groups (`param_groups`, the UNet2D rules): "base", "env" (V, official
`connecters_out`) and "joint" (`input_connectors_<i>` / `output_connectors_<i>`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from codi_jax.models import unet_common
from codi_jax.models.layers import GroupNorm32, SpatialTransformer, TimeEmbed, dense
from codi_jax.models.unet import REMAT_POLICIES, group_mask, group_sizes, param_groups  # noqa: F401  (same groups)
from codi_jax.parallel.partitioning import with_constraint

CONFIGS: dict[str, dict[str, Any]] = {
    # Released text UNet (openai_unet_0dmd): 2,048,385,408 parameters
    # = base 1,708,848,448 + env 95,589,760 + joint 243,947,200.
    "full": dict(in_channels=768, out_channels=768, model_channels=320, channel_mult=(1, 2, 4, 4),
                 second_dim=(4, 4, 4, 4), num_res_blocks=(2, 2, 2, 2), attention_levels=(True, True, True, False),
                 num_heads=8, context_dim=768, joint=True, env_channel_mult=(1, 2, 4), env_num_res_blocks=(1, 1, 1),
                 env_second_dim=(4, 4, 4), connector_levels=(True, True, True, False), connector_dim=1280),
    # CPU-sized with every feature on; V starts at (model_channels // 2) * second_dim = 64
    # features, the smallest multiple of GroupNorm's 32 groups at this width.
    "tiny": dict(in_channels=16, out_channels=16, model_channels=32, channel_mult=(1, 1), second_dim=(4, 4),
                 num_res_blocks=(1, 1), attention_levels=(True, False), num_heads=2, context_dim=32, joint=True,
                 env_channel_mult=(1, 1), env_num_res_blocks=(1, 1), env_second_dim=(4, 4),
                 connector_levels=(True, False), connector_dim=32),
}

_GROUPS = 32


def to_tokens(h, channels: int):
    """Flat channel-major [B, C*S] -> transformer tokens [B, S, 1, C]."""
    return jnp.swapaxes(h.reshape(h.shape[0], channels, -1), 1, 2)[:, :, None, :]


def from_tokens(x):
    """Tokens [B, S, 1, C] (or [B, S, C]) -> flat channel-major [B, C*S]."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[-1])
    return jnp.swapaxes(x, 1, 2).reshape(x.shape[0], -1)


class FCResBlock(nn.Module):
    """ResBlock on a flat vector (official FCBlock_MultiDim): GN(32 groups of consecutive features), SiLU,
    Linear, + Linear(SiLU(emb)), GN, SiLU, Linear (zero-init); a Linear skip when the width changes."""
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        # GroupNorm32 on [B, N] groups consecutive features: the official flattened-vector norm.
        h = nn.silu(GroupNorm32(1e-5, self.dtype, name="in_norm")(x))
        h = dense(self.out_features, ("conv_in", "conv_out"), dtype=self.dtype, name="in_proj")(h)
        h = h + dense(self.out_features, ("embed", "conv_out"), dtype=self.dtype, name="emb_proj")(nn.silu(emb))
        h = nn.silu(GroupNorm32(1e-5, self.dtype, name="out_norm")(h))
        h = dense(self.out_features, ("conv_in", "conv_out"), zero_init=True, dtype=self.dtype, name="out_proj")(h)
        if x.shape[-1] != self.out_features:
            x = dense(self.out_features, ("conv_in", "conv_out"), dtype=self.dtype, name="skip")(x)
        return x.astype(self.dtype) + h


class FCBlock(nn.Module):
    """One encoder / decoder entry (or connector) on the flat hidden [B, C*S]:
    [FCResBlock to C*S] [SpatialTransformer over the S tokens] [square Linear: down / up]."""
    channels: int  # C after this block (token width)
    second_dim: int = 0  # S after this block; with `channels` the width of the FCResBlock (0: no ResBlock)
    num_heads: int = 0  # 0: no SpatialTransformer
    context_dim: int = 0
    down: bool = False
    up: bool = False
    attn_impl: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, emb, context):
        if self.second_dim:
            h = FCResBlock(self.channels * self.second_dim, self.dtype, name="res")(h, emb)
        if self.num_heads:
            c = self.channels
            st = SpatialTransformer(c, self.num_heads, c // self.num_heads, self.context_dim, self.attn_impl,
                                    self.dtype, name="attn")
            h = from_tokens(st(to_tokens(h, c), context))
        for flag, name in ((self.down, "down"), (self.up, "up")):
            if flag:
                h = dense(h.shape[-1], ("conv_in", "conv_out"), dtype=self.dtype, name=name)(h)
        return with_constraint(h, ("batch", "act_embed"))


def _block_cls(remat_policy: str):
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")
    if remat_policy == "none":
        return FCBlock
    return nn.remat(FCBlock, policy=REMAT_POLICIES[remat_policy])


class MiddleBlock(nn.Module):
    """FCResBlock, SpatialTransformer, FCResBlock at the innermost width."""
    channels: int
    second_dim: int
    num_heads: int
    context_dim: int
    remat_policy: str = "none"
    attn_impl: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, emb, context):
        block = _block_cls(self.remat_policy)
        kw = dict(attn_impl=self.attn_impl, dtype=self.dtype)
        h = block(self.channels, self.second_dim, name="block_0", **kw)(h, emb, context)
        h = block(self.channels, 0, self.num_heads, self.context_dim, name="block_1", **kw)(h, emb, context)
        return block(self.channels, self.second_dim, name="block_2", **kw)(h, emb, context)


class EnvEncoder(nn.Module):
    """CoDi's text environment encoder V: Linear to [(mc//2), S0], [FCResBlock] per level with square Linears
    between levels, then GN(32 over C)-SiLU-Linear to out_channels, L2-normalised with no eps -> [B, 1, out]."""
    model_channels: int
    first_second_dim: int
    channel_mult: Sequence[int]
    num_res_blocks: Sequence[int]
    second_dim: Sequence[int]
    out_channels: int
    remat_policy: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        block = _block_cls(self.remat_policy)
        mc = self.model_channels
        channels = mc // 2
        h = dense(channels * self.first_second_dim, ("conv_in", "conv_out"), dtype=self.dtype, name="blocks_0")(x)
        index = 1
        for level, mult in enumerate(self.channel_mult):
            channels = mc * mult
            for _ in range(self.num_res_blocks[level]):
                h = block(channels, self.second_dim[level], dtype=self.dtype, name=f"blocks_{index}")(h, emb, None)
                index += 1
            if level != len(self.channel_mult) - 1:
                h = block(channels, down=True, dtype=self.dtype, name=f"blocks_{index}")(h, emb, None)
                index += 1
        h = from_tokens(nn.silu(GroupNorm32(1e-5, self.dtype, name="out_norm")(to_tokens(h, channels)[:, :, 0])))
        v = dense(self.out_channels, ("conv_in", "conv_out"), dtype=self.dtype, name="out_proj")(h)
        v = v.astype(jnp.float32)[:, None, :]
        return v / jnp.sqrt(jnp.sum(jnp.square(v), axis=-1, keepdims=True))


class UNetText(nn.Module):
    """CoDi `UNetModel0D_MultiDim` on x [B, in_channels].

    Constructor fields mirror UNet2D (see `from_official`), plus `second_dim` (positions per
    level, official second_dim) and `env_second_dim` (official second_dim_connector); V starts
    at (model_channels // 2) * second_dim[0] features. Heads: `num_heads` of width
    C // num_heads in every SpatialTransformer and connector.
    """
    in_channels: int = 768
    out_channels: int = 768
    model_channels: int = 320
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    second_dim: Sequence[int] = (4, 4, 4, 4)
    num_res_blocks: Sequence[int] = (2, 2, 2, 2)
    attention_levels: Sequence[bool] = (True, True, True, False)
    num_heads: int = 8
    context_dim: int = 768
    joint: bool = False
    env_channel_mult: Sequence[int] = (1, 2, 4)
    env_num_res_blocks: Sequence[int] = (1, 1, 1)
    env_second_dim: Sequence[int] = (4, 4, 4)
    connector_levels: Sequence[bool] = (True, True, True, False)
    connector_dim: int = 1280
    dtype: Any = jnp.float32
    remat_policy: str = "none"
    attn_impl: str = "xla"

    def _check_config(self):
        levels = len(self.channel_mult)
        per_level = ("second_dim", "num_res_blocks", "attention_levels") + (("connector_levels",) if self.joint else ())
        for name in per_level:
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries; expected one per level ({levels})")
        mc = self.model_channels
        widths = {f"level {i} (model_channels*channel_mult*second_dim)": mc * m * s
                  for i, (m, s) in enumerate(zip(self.channel_mult, self.second_dim))}
        widths["out head (model_channels*channel_mult[0])"] = mc * self.channel_mult[0]
        for i, m in enumerate(self.channel_mult):
            # SpatialTransformers (GroupNorm over C) sit at attention / connector levels and in the middle block.
            if self.attention_levels[i] or (self.joint and self.connector_levels[i]) or i == levels - 1:
                widths[f"transformer width at level {i}"] = mc * m
        if self.joint:
            for name in ("env_num_res_blocks", "env_second_dim"):
                if len(getattr(self, name)) != len(self.env_channel_mult):
                    raise ValueError(f"{name} has {len(getattr(self, name))} entries; expected "
                                     f"{len(self.env_channel_mult)} (one per env_channel_mult level)")
            widths["V input ((model_channels//2)*second_dim[0])"] = (mc // 2) * self.second_dim[0]
            widths.update({f"V level {i}": mc * m * s
                           for i, (m, s) in enumerate(zip(self.env_channel_mult, self.env_second_dim))})
            widths["V head (model_channels*env_channel_mult[-1])"] = mc * self.env_channel_mult[-1]
        for what, width in widths.items():
            if width % _GROUPS:
                raise ValueError(f"{what} is {width} wide; GroupNorm needs a multiple of {_GROUPS}")
        # The decoder concatenates [h, skip] channel-wise, so both must have the same positions.
        skip_dims = [self.second_dim[0]]
        for level, s in enumerate(self.second_dim):
            skip_dims += [s] * (self.num_res_blocks[level] + (level != levels - 1))
        current = self.second_dim[-1]
        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks[level] + 1):
                skip = skip_dims.pop()
                if skip != current:
                    raise ValueError(f"second_dim {tuple(self.second_dim)}: a decoder block at level {level} "
                                     f"joins {current} positions with a {skip}-position skip; they must match")
                current = self.second_dim[level]

    def setup(self):
        self._check_config()
        levels = len(self.channel_mult)
        block = _block_cls(self.remat_policy)
        mc = self.model_channels
        kw = dict(attn_impl=self.attn_impl, dtype=self.dtype)

        self.time_embed = TimeEmbed(mc, 4 * mc, self.dtype)
        inputs: list[Any] = [dense(mc * self.second_dim[0], ("conv_in", "conv_out"), dtype=self.dtype)]
        input_connectors: dict[str, Any] = {}
        for level, mult in enumerate(self.channel_mult):
            c, s = mc * mult, self.second_dim[level]
            heads = self.num_heads if self.attention_levels[level] else 0
            for _ in range(self.num_res_blocks[level]):
                if self.joint and self.connector_levels[level]:
                    input_connectors[str(len(inputs))] = block(c, 0, self.num_heads, self.connector_dim, **kw)
                inputs.append(block(c, s, heads, self.context_dim, **kw))
            if level != levels - 1:
                inputs.append(block(c, down=True, **kw))
        self.input_blocks = inputs
        self.input_connectors = input_connectors
        self.middle_block = MiddleBlock(mc * self.channel_mult[-1], self.second_dim[-1], self.num_heads,
                                        self.context_dim, self.remat_policy, **kw)

        outputs, output_connectors = [], {}
        for level in reversed(range(levels)):
            c, s = mc * self.channel_mult[level], self.second_dim[level]
            heads = self.num_heads if self.attention_levels[level] else 0
            for j in range(self.num_res_blocks[level] + 1):
                up = level > 0 and j == self.num_res_blocks[level]
                if self.joint and self.connector_levels[level]:
                    output_connectors[str(len(outputs))] = block(c, 0, self.num_heads, self.connector_dim, **kw)
                outputs.append(block(c, s, heads, self.context_dim, up=up, **kw))
        self.output_blocks = outputs
        self.output_connectors = output_connectors
        self.out_norm = GroupNorm32(1e-5, self.dtype)
        self.out_proj = dense(self.out_channels, ("conv_in", "conv_out"), zero_init=True, dtype=self.dtype)
        if self.joint:
            self.env = EnvEncoder(mc, self.second_dim[0], tuple(self.env_channel_mult),
                                  tuple(self.env_num_res_blocks), tuple(self.env_second_dim), self.connector_dim,
                                  self.remat_policy, self.dtype)

    def _check_x(self, x, t):
        if x.ndim != 2 or x.shape[-1] != self.in_channels:
            raise ValueError(f"UNetText expects x [B, {self.in_channels}], got shape {x.shape}")
        return unet_common.check_timesteps(x, t)

    def __call__(self, x, t, context, joint_context=None, aliased_skip: bool = False):
        """eps [B, out_channels]. joint_context None skips the connectors (single-output generation);
        aliased_skip reproduces the released wrapper, whose first decoder block sees cat([mid, mid])."""
        t = self._check_x(x, t)
        emb = self.time_embed(t)
        joint_context = unet_common.check_contexts(self, x, emb, context, joint_context)
        h = unet_common.walk(self, self.input_blocks[0](x), emb, context, joint_context, aliased_skip)
        c = self.model_channels * self.channel_mult[0]
        h = from_tokens(nn.silu(self.out_norm(to_tokens(h, c)[:, :, 0])))
        return self.out_proj(h).astype(jnp.float32)

    def env_encode(self, x, t):
        """V(x) with this UNet's time embedding: [B, 1, connector_dim], unit L2 norm."""
        return unet_common.env_encode(self, x, t)


def build(variant: str | dict, **overrides) -> UNetText:
    """UNetText from a preset name in CONFIGS or an explicit kwargs dict; overrides (dtype, remat_policy,
    attn_impl, ...) win."""
    return UNetText(**{**unet_common.preset(variant, CONFIGS, "UNetText"), **overrides})


_OFFICIAL_NAMES = {
    "input_channels": "in_channels", "output_channels": "out_channels", "model_channels": "model_channels",
    "channel_mult": "channel_mult", "second_dim": "second_dim", "num_noattn_blocks": "num_res_blocks",
    "with_attn": "attention_levels", "num_heads": "num_heads", "context_dim": "context_dim",
    "init_connector": "joint", "channel_mult_connector": "env_channel_mult",
    "num_noattn_blocks_connector": "env_num_res_blocks", "second_dim_connector": "env_second_dim",
    "with_connector": "connector_levels", "connector_output_channel": "connector_dim",
}


def from_official(args: dict, **overrides) -> UNetText:
    """UNetText from the official `UNetModel0D_MultiDim` constructor arguments (config.json / yaml `args`);
    the official defaults fill what `args` leaves out (init_connector defaults to True there)."""
    kwargs = {"joint": True, **unet_common.official_kwargs(args, _OFFICIAL_NAMES, "UNetModel0D_MultiDim")}
    return build(kwargs, **overrides)
