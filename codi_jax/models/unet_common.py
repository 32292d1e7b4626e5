"""What both CoDi UNets share: the walk (encoder blocks with their skips, the middle block, decoder blocks fed
cat([h, skip]), and after the blocks that have one, a joint connector reading the partner's environment
encoding), the input checks, presets and the official constructor arguments. The image/video UNet (unet.py)
and the text UNet (unet_text.py) differ only in their blocks and in what comes before and after the walk;
each calls these from its own methods, so the parameter tree is its own.
"""
from __future__ import annotations

import jax.numpy as jnp


def check_timesteps(x, t):
    """t as [B] (a scalar is broadcast), or ValueError."""
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (x.shape[0],))
    if t.shape != (x.shape[0],):
        raise ValueError(f"timesteps must have shape [{x.shape[0]}] (one per sample), got {t.shape}")
    return t


def check_contexts(unet, x, emb, context, joint_context):
    """The joint context the connectors read (None: skip them), after checking both contexts' shapes. At init
    it is the UNet's own V(x), so the environment encoder's and the connectors' parameters are created."""
    if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != unet.context_dim:
        raise ValueError(f"context must be [{x.shape[0]}, L, {unet.context_dim}], got {context.shape}")
    if joint_context is not None:
        if not unet.joint:
            raise ValueError("joint_context given but this UNet has no joint connectors (joint=False)")
        if joint_context.shape != (x.shape[0], 1, unet.connector_dim):
            raise ValueError(f"joint_context must be [{x.shape[0]}, 1, {unet.connector_dim}], "
                             f"got {joint_context.shape}")
    elif unet.joint and unet.is_initializing():
        joint_context = unet.env(x, emb)
    return joint_context


def walk(unet, h, emb, context, joint_context, aliased_skip: bool):
    """From the first block's output to the last decoder block's. aliased_skip reproduces the released
    wrapper, whose first decoder block sees cat([mid, mid])."""
    skips = [h]
    for i, block in enumerate(unet.input_blocks[1:], start=1):
        h = block(h, emb, context)
        if joint_context is not None and str(i) in unet.input_connectors:
            h = unet.input_connectors[str(i)](h, emb, joint_context)
        skips.append(h)
    h = unet.middle_block(h, emb, context)
    if aliased_skip:
        skips[-1] = h
    for i, block in enumerate(unet.output_blocks):
        # Channels last (the text UNet's flat vectors are channel-major): the concatenation joins channels.
        h = block(jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1), emb, context)
        if joint_context is not None and str(i) in unet.output_connectors:
            h = unet.output_connectors[str(i)](h, emb, joint_context)
    return h


def env_encode(unet, x, t):
    """V(x) with the UNet's time embedding: [B, 1, connector_dim], unit L2 norm."""
    if not unet.joint:
        raise ValueError("env_encode needs the environment encoder (joint=True)")
    t = unet._check_x(x, t)
    return unet.env(x, unet.time_embed(t))


def preset(variant, configs: dict, what: str) -> dict:
    """The constructor kwargs of a preset name in `configs`, or of an explicit kwargs dict."""
    if isinstance(variant, str):
        if variant not in configs:
            raise ValueError(f"unknown {what} variant {variant!r}; expected one of {sorted(configs)}")
        variant = configs[variant]
    return dict(variant)


def official_kwargs(args: dict, names: dict, what: str) -> dict:
    """Our constructor kwargs from the official class `what`'s arguments (config.json / yaml `args`), renamed
    by `names`; `use_checkpoint`, the official gradient-checkpointing switch, maps to remat "full"."""
    kwargs = {}
    for key, value in args.items():
        if key == "use_checkpoint":
            kwargs["remat_policy"] = "full" if value else "none"
        elif key in names:
            kwargs[names[key]] = tuple(value) if isinstance(value, list) else value
        else:
            raise ValueError(f"unknown {what} argument {key!r}")
    return kwargs
