"""InceptionV3 as pytorch-fid runs it for FID (and as torch-fidelity takes the inception score's logits):
the TF "inception-2015-12-05" graph ported to torchvision's module layout with pytorch-fid's patches
(average pools that leave the padding out, a max pool in the last block).

Input: images [B, H, W, 3], uint8 or float in [0, 1], any size. They are resized to 299x299 bilinearly
without antialiasing (torch's `interpolate(align_corners=False)`), scaled to [-1, 1], and run through the
network. Output: {"pool": the 2048-d final average pool (FID's features), "logits": the 1008-d
classifier logits without the bias (the inception score's input, torch-fidelity's `logits_unbiased`)}.
Like pytorch-fid's `--dims`, `dims` 64 / 192 / 768 takes "pool" from an earlier block instead (spatially
averaged), which stops the network there unless the logits are asked for too.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or our .npz of it), converted by
`codi_jax.eval.metrics.torch_weights` with the reference's module names.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.eval.metrics.norm import FrozenBatchNorm

SIZE = 299
POOL_DIM = 2048
# pytorch-fid's BLOCK_INDEX_BY_DIM: the feature width after each of its four blocks.
DIMS = (64, 192, 768, 2048)
NUM_CLASSES = 1008
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class BasicConv(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> relu, torchvision's BasicConv2d."""
    features: int
    kernel: Sequence[int] = (1, 1)
    stride: int = 1
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, tuple(self.kernel), strides=self.stride, use_bias=False, name="conv",
                    padding=[(p, p) for p in self.padding])(x)
        return nn.relu(FrozenBatchNorm(1e-3, name="bn")(x))


def _avg_pool_same(x):
    # pytorch-fid's patch: TensorFlow's average pool leaves the zero padding out of the mean.
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, padding=0):
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((padding, padding),) * 2)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """The last two blocks; pytorch-fid's second one (`max_pool_branch`) pools by max, not average."""
    max_pool_branch: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, stride=1, padding=1) if self.max_pool_branch else _avg_pool_same(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images, size: int):
    """[B, H, W, C] -> [B, size, size, C], half-pixel bilinear without antialiasing (torch's
    `interpolate(mode="bilinear", align_corners=False)`, also when shrinking)."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), method="bilinear", antialias=False)


def preprocess(images):
    """uint8 [0, 255] or float [0, 1] images -> float32 [B, 299, 299, 3] in [-1, 1]."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return 2.0 * resize_bilinear(x, SIZE) - 1.0


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 (see the module docstring); `__call__` takes images, not pixels in
    [-1, 1]: the preprocessing runs on the device too."""
    dims: int = POOL_DIM
    logits: bool = True

    def _blocks(self):
        """pytorch-fid's four blocks, each ending where one of its feature widths is read."""
        def block0(x):
            x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
            x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
            return _max_pool(BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x))

        def block1(x):
            x = BasicConv(80, name="Conv2d_3b_1x1")(x)
            return _max_pool(BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x))

        def block2(x):
            x = InceptionA(32, name="Mixed_5b")(x)
            x = InceptionA(64, name="Mixed_5c")(x)
            x = InceptionA(64, name="Mixed_5d")(x)
            x = InceptionB(name="Mixed_6a")(x)
            for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
                x = InceptionC(c7, name=name)(x)
            return x

        def block3(x):
            x = InceptionD(name="Mixed_7a")(x)
            x = InceptionE(name="Mixed_7b")(x)
            return InceptionE(max_pool_branch=True, name="Mixed_7c")(x)

        return block0, block1, block2, block3

    @nn.compact
    def __call__(self, images):
        if self.dims not in DIMS:
            raise ValueError(f"InceptionV3: dims {self.dims} is not one of pytorch-fid's {DIMS}")
        last = DIMS.index(POOL_DIM) if self.logits else DIMS.index(self.dims)
        x, out = preprocess(images), {}
        for index, block in enumerate(self._blocks()[:last + 1]):
            x = block(x)
            if DIMS[index] == self.dims:
                out["pool"] = jnp.mean(x, axis=(1, 2))
        if self.logits:
            # The classifier's weight alone: the inception score uses logits without the bias.
            fc = self.param("fc_kernel", nn.initializers.lecun_normal(), (POOL_DIM, NUM_CLASSES))
            self.param("fc_bias", nn.initializers.zeros_init(), (NUM_CLASSES,))
            out["logits"] = jnp.mean(x, axis=(1, 2)) @ fc
        return out


def init_inputs(batch: int = 1):
    return (jnp.zeros((batch, SIZE, SIZE, 3), jnp.uint8),)


def convert_state_dict(state_dict) -> dict:
    """pytorch-fid's state dict (torchvision names) -> our flat paths of the whole network."""
    from codi_jax.eval.metrics import torch_weights

    flat = torch_weights.to_flax({k: v for k, v in state_dict.items() if not k.startswith("AuxLogits.")})
    flat["fc_kernel"] = flat.pop("fc/kernel")
    flat["fc_bias"] = flat.pop("fc/bias")
    return flat

