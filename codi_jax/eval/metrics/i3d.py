"""I3D (Inception-v1 inflated to 3-D, Kinetics-400) as FVD runs it: piergiaj's `pytorch_i3d.InceptionI3d`,
the PyTorch port of the TF-Hub model FVD was defined with, whose converted weights (`i3d_pretrained_400.pt`)
the common PyTorch FVD code loads.

Kept from the reference: TensorFlow "SAME" padding computed from each input size (zeros, also before
max pools), batch norms with eps 1e-3, the [2, 7, 7] average pool, the 1x1x1 logits conv with bias.
Input: videos [B, T, H, W, 3] uint8, T >= 9; frames are resized to 224x224 (bilinear, no antialias)
and scaled to [-1, 1]. Output: {"logits": the 400 Kinetics logits averaged over the remaining time
steps} -- FVD's features. CoDi's 8-frame clips are too short for the network's temporal pooling, so FVD
repeats each frame (`repeat_frames`) up to `FVD_FRAMES`, a choice of ours the references do not make.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from codi_jax.eval.metrics.inception import resize_bilinear
from codi_jax.eval.metrics.norm import FrozenBatchNorm

SIZE = 224
NUM_CLASSES = 400
FVD_FRAMES = 16
WEIGHTS_FILE = "i3d_pretrained_400.pt"


def same_padding(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """TensorFlow's SAME padding per axis (the reference's `compute_pad`), more at the back when odd."""
    pads = []
    for size, k, s in zip(sizes, kernel, stride):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad(x, kernel, stride):
    return jnp.pad(x, [(0, 0), *same_padding(x.shape[1:4], kernel, stride), (0, 0)])


def max_pool_same(x, kernel, stride):
    return nn.max_pool(_pad(x, kernel, stride), tuple(kernel), tuple(stride))


class Unit3D(nn.Module):
    features: int
    kernel: Sequence[int] = (1, 1, 1)
    stride: Sequence[int] = (1, 1, 1)
    norm_and_relu: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, tuple(self.kernel), tuple(self.stride), padding="VALID",
                    use_bias=not self.norm_and_relu, name="conv3d")(_pad(x, self.kernel, self.stride))
        if self.norm_and_relu:
            x = nn.relu(FrozenBatchNorm(1e-3, name="bn")(x))
        return x


class InceptionModule(nn.Module):
    channels: Sequence[int]

    @nn.compact
    def __call__(self, x):
        c = self.channels
        b0 = Unit3D(c[0], name="b0")(x)
        b1 = Unit3D(c[2], (3, 3, 3), name="b1b")(Unit3D(c[1], name="b1a")(x))
        b2 = Unit3D(c[4], (3, 3, 3), name="b2b")(Unit3D(c[3], name="b2a")(x))
        b3 = Unit3D(c[5], name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


MIXED = {"Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
         "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
         "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
         "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
         "Mixed_5c": (384, 192, 384, 48, 128, 128)}


def preprocess(videos):
    """uint8 [B, T, H, W, 3] -> float32 [B, T, 224, 224, 3] in [-1, 1]."""
    b, t = videos.shape[:2]
    frames = videos.reshape((b * t,) + videos.shape[2:]).astype(jnp.float32)
    frames = resize_bilinear(frames, SIZE) / 127.5 - 1.0
    return frames.reshape(b, t, SIZE, SIZE, 3)


def repeat_frames(videos: np.ndarray, frames: int = FVD_FRAMES) -> np.ndarray:
    """[B, T, ...] -> [B, frames, ...] by nearest-neighbour repetition (T <= frames)."""
    t = videos.shape[1]
    return videos[:, np.floor(np.arange(frames) * t / frames).astype(int)] if t < frames else videos


class InceptionI3d(nn.Module):
    @nn.compact
    def __call__(self, videos):
        x = preprocess(videos)
        x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = Unit3D(64, name="Conv3d_2b_1x1")(x)
        x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            x = InceptionModule(MIXED[name], name=name)(x)
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = InceptionModule(MIXED[name], name=name)(x)
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            x = InceptionModule(MIXED[name], name=name)(x)
        if x.shape[1] < 2:
            raise ValueError(f"I3D: {videos.shape[1]} frames leave {x.shape[1]} time step for its 2-step pool; "
                             "expected at least 9 frames (repeat_frames)")
        x = nn.avg_pool(x, (2, 7, 7), (1, 1, 1))
        x = Unit3D(NUM_CLASSES, norm_and_relu=False, name="logits")(x)
        return {"logits": jnp.mean(x, axis=(1, 2, 3))}


def init_inputs(batch: int = 1):
    return (jnp.zeros((batch, FVD_FRAMES, SIZE, SIZE, 3), jnp.uint8),)


def convert_state_dict(state_dict) -> dict:
    """pytorch_i3d's state dict -> our flat paths."""
    from codi_jax.eval.metrics import torch_weights

    return torch_weights.to_flax(state_dict)
