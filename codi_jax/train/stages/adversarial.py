"""The originals' adversarial and perceptual autoencoder losses, in a form one loss / one grad can train.

LDM's `LPIPSWithDiscriminator` (SD's image VAE; AudioLDM's mel VAE with the same class):
  discriminator  hinge: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
  generator      -mean D(x_hat), times the adaptive weight
                 disc_weight * clip(||d rec / d W|| / (||d gan / d W|| + 1e-4), 0, 1e4) (no gradient through it),
                 W the decoder's last conv kernel, rec the reconstruction loss (L1 + perceptual)
  both switched on at step disc_start (before it they are exactly zero).
HiFi-GAN (vocoder), over every sub-discriminator k of MPD + MSD:
  discriminator  sum_k mean (1 - D_k(y))^2 + mean D_k(y_hat)^2
  generator      sum_k mean (1 - D_k(y_hat))^2 + feature_weight * sum over feature maps mean |f(y) - f(y_hat)|

The trainer takes one gradient of one scalar, so generator and discriminator terms are summed and the
gradient is routed with stop_gradient: the discriminator sees stop_gradient(fake) (its loss moves only
discriminator parameters), and the generator's terms run the discriminator on stop_gradient(its
parameters) (they move only the generator). One grad therefore gives each network the gradient of its
own loss, as the originals' two optimizers do (updates here are simultaneous: the discriminator sees the
generator's output from before this step's update, not after it).

LPIPS (the perceptual part of LDM's reconstruction loss): VGG16 features relu1_2 .. relu5_3 of both inputs
after LPIPS' scaling layer, unit-normalised over channels, squared difference, a learned 1x1 conv (no bias)
per layer, spatial mean, summed. Weights come only from a local file (`load_lpips`); there is no random
stand-in.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake):
    return -jnp.mean(logits_fake)


def least_squares_d_loss(reals: Sequence, fakes: Sequence):
    return sum(jnp.mean((1.0 - r) ** 2) + jnp.mean(f ** 2) for r, f in zip(reals, fakes))


def least_squares_g_loss(fakes: Sequence):
    return sum(jnp.mean((1.0 - f) ** 2) for f in fakes)


def feature_matching_loss(real_maps: Sequence[Sequence], fake_maps: Sequence[Sequence]):
    """sum over sub-discriminators and their feature maps of mean |real - fake| (HiFi-GAN's, before its 2x)."""
    return sum(jnp.mean(jnp.abs(r.astype(jnp.float32) - f.astype(jnp.float32)))
               for rs, fs in zip(real_maps, fake_maps) for r, f in zip(rs, fs))


def adaptive_weight(rec_grad, gan_grad, disc_weight: float):
    """LDM's generator weight: disc_weight * clip(||rec_grad|| / (||gan_grad|| + 1e-4), 0, 1e4), a constant."""
    ratio = jnp.linalg.norm(rec_grad.ravel()) / (jnp.linalg.norm(gan_grad.ravel()) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, 1e4) * disc_weight)


class LastLayerTap:
    """Records the input and parameters of one `nn.Conv` (by module path) while a network runs, so the
    gradient of any function of that network's output with respect to the conv's kernel can be taken
    by re-running only that conv: `kernel_grad(fn)` = d fn(output) / d kernel at the recorded point.

        tap = LastLayerTap(("decoder", "conv_out"))
        with tap:
            recon, posterior = vae.apply(variables, x, rng)
    """

    def __init__(self, path: Sequence[str]):
        self.path = tuple(path)
        self.inputs = self.kernel = self.bias = self.module = None
        self._context = None

    def _intercept(self, next_fun, args, kwargs, context):
        if context.method_name == "__call__" and tuple(context.module.path) == self.path:
            module = context.module
            if not isinstance(module, nn.Conv):
                raise ValueError(f"last layer {'/'.join(self.path)} is a {type(module).__name__}, expected nn.Conv")
            self.module, self.inputs = module, jnp.asarray(args[0])
            self.kernel = module.variables["params"]["kernel"]
            self.bias = module.variables["params"].get("bias")
        return next_fun(*args, **kwargs)

    def __enter__(self):
        self._context = nn.intercept_methods(self._intercept)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)
        if self.inputs is None:
            raise ValueError(f"no conv at module path {'/'.join(self.path)} ran inside the tap")
        return False

    def output(self, kernel):
        """The conv's float32 output at the recorded input, with `kernel` (its recorded bias added)."""
        m = self.module
        rank = kernel.ndim - 2
        as_tuple = lambda v: (v,) * rank if isinstance(v, int) else tuple(v or (1,) * rank)
        if isinstance(m.padding, str):
            if m.padding.upper() not in ("SAME", "VALID"):
                raise ValueError(f"last layer padding {m.padding!r} is not supported; expected SAME, VALID or pairs")
            padding = m.padding
        elif isinstance(m.padding, int):
            padding = [(m.padding, m.padding)] * rank
        else:
            padding = [(p, p) if isinstance(p, int) else tuple(p) for p in m.padding]
        spatial = "".join("HWD"[:rank])
        y = jax.lax.conv_general_dilated(
            self.inputs.astype(jnp.float32), kernel.astype(jnp.float32), window_strides=as_tuple(m.strides),
            padding=padding, lhs_dilation=as_tuple(m.input_dilation), rhs_dilation=as_tuple(m.kernel_dilation),
            feature_group_count=m.feature_group_count,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        return y if self.bias is None else y + self.bias.astype(jnp.float32)

    def kernel_grad(self, fn: Callable):
        """d fn(output(kernel)) / d kernel at the recorded kernel; no gradient flows back into the network."""
        inputs, bias = self.inputs, self.bias
        self.inputs = jax.lax.stop_gradient(inputs)
        self.bias = None if bias is None else jax.lax.stop_gradient(bias)
        try:
            return jax.grad(lambda k: fn(self.output(k)))(jax.lax.stop_gradient(self.kernel))
        finally:
            self.inputs, self.bias = inputs, bias


def after_start(step, start: int, fn: Callable, *operands):
    """fn(*operands) from step `start` on, exact zeros of the same structure before (skipped under lax.cond)."""
    if start <= 0:
        return fn(*operands)
    shapes = jax.eval_shape(fn, *operands)
    zeros = lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.cond(step >= start, fn, zeros, *operands)


# LPIPS on VGG16: (our layer name, torch `LPIPS` state-dict prefix) in order; a 2x2 max-pool precedes each
# block after the first. Taps (after the block's last ReLU) feed lin0 .. lin4.
VGG16_BLOCKS = (
    (("conv1_1", "net.slice1.0"), ("conv1_2", "net.slice1.2")),
    (("conv2_1", "net.slice2.5"), ("conv2_2", "net.slice2.7")),
    (("conv3_1", "net.slice3.10"), ("conv3_2", "net.slice3.12"), ("conv3_3", "net.slice3.14")),
    (("conv4_1", "net.slice4.17"), ("conv4_2", "net.slice4.19"), ("conv4_3", "net.slice4.21")),
    (("conv5_1", "net.slice5.24"), ("conv5_2", "net.slice5.26"), ("conv5_3", "net.slice5.28")),
)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS' ScalingLayer: inputs in [-1, 1] -> (x - shift) / scale per RGB channel (a 1-channel input broadcasts
# to 3, which is how the original treats AudioLDM's mel).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_ANCHOR = "net.slice1.0.weight"

_conv_kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("kernel", "kernel", "conv_in", "conv_out"))
_conv_bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",))


class Lpips(nn.Module):
    """LPIPS distance (VGG16, 'lin' weights) between two batches in [-1, 1], [B, H, W, C] with C in {1, 3} -> [B]."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y):
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"LPIPS inputs: expected two equal [B, H, W, 1 or 3] batches, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        h = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
        h = ((h - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE)).astype(self.dtype)
        total = 0.0
        for level, block in enumerate(VGG16_BLOCKS):
            if level:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
            for name, _ in block:
                h = nn.relu(nn.Conv(VGG16_WIDTHS[level], (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                    kernel_init=_conv_kernel, bias_init=_conv_bias, name=name)(h))
            feats = h.astype(jnp.float32)
            # Unit length over channels (LPIPS' eps 1e-10; the 1e-20 inside keeps the gradient finite at 0).
            feats = feats / (jnp.sqrt(jnp.sum(feats ** 2, axis=-1, keepdims=True) + 1e-20) + 1e-10)
            fx, fy = jnp.split(feats, 2, axis=0)
            diff = (fx - fy) ** 2
            lin = nn.Conv(1, (1, 1), use_bias=False, kernel_init=_conv_kernel, name=f"lin{level}")(diff)
            total = total + jnp.mean(lin, axis=(1, 2, 3))
        return total


def _read_tensors(path: pathlib.Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import torch  # a torch pickle (.pth / .ckpt): read only where torch is installed

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with arbitrary objects are refused by weights_only
        raise ValueError(f"{path}: not readable as a torch state dict with weights_only=True "
                         f"({type(e).__name__}); save the LPIPS state dict as .safetensors") from None
    state = state.get("state_dict", state)
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def load_lpips(path: str) -> dict[str, np.ndarray]:
    """{'<layer>/<kernel|bias>': array} of our `Lpips` from a local file holding the state dict of LPIPS
    (taming's / the lpips package's `LPIPS` module: net.sliceN.I.weight/bias, linN.model.1.weight), as
    .safetensors or a torch pickle; the keys may sit under a prefix, e.g. `loss.perceptual_loss.` in LDM's
    autoencoder checkpoints, which carry LPIPS. ValueError (one line) for a missing file or key."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"LPIPS weights file {str(file)!r} not found")
    tensors = _read_tensors(file)
    anchors = [k for k in tensors if k.endswith(_LPIPS_ANCHOR)]
    if len(anchors) != 1:
        raise ValueError(f"{file} holds {len(anchors)} LPIPS state dicts (keys ending in {_LPIPS_ANCHOR!r}); "
                         "expected 1")
    prefix = anchors[0][:-len(_LPIPS_ANCHOR)]

    def get(key, shape):
        if prefix + key not in tensors:
            raise ValueError(f"{file} has no {prefix + key!r}")
        value = np.asarray(tensors[prefix + key], np.float32)
        if value.shape != shape:
            raise ValueError(f"{file}: {prefix + key} is {value.shape}, expected {shape}")
        return value

    out, c_in = {}, 3
    for level, block in enumerate(VGG16_BLOCKS):
        c_out = VGG16_WIDTHS[level]
        for name, key in block:
            out[f"{name}/kernel"] = get(f"{key}.weight", (c_out, c_in, 3, 3)).transpose(2, 3, 1, 0)
            out[f"{name}/bias"] = get(f"{key}.bias", (c_out,))
            c_in = c_out
        out[f"lin{level}/kernel"] = get(f"lin{level}.model.1.weight", (1, c_out, 1, 1)).transpose(2, 3, 1, 0)
    return out


def lpips_variables(module: Lpips, weights: dict[str, np.ndarray]) -> dict:
    """The boxed (logically named) variables of `module` holding `weights` (from `load_lpips`)."""
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))
    params = traverse_util.flatten_dict(boxed["params"], sep="/")
    missing = sorted(set(params) ^ set(weights))
    if missing:
        raise ValueError(f"LPIPS weights do not match the network: {missing[:3]}")
    filled = {k: box.replace_boxed(jnp.asarray(weights[k])) for k, box in params.items()}
    return {"params": traverse_util.unflatten_dict(filled, sep="/")}
