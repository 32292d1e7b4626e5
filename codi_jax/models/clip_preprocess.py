"""CLIP pixel preprocessing as CoDi runs it (transformers 4.26 `CLIPFeatureExtractor`), on the host.

For an image x in [-1, 1] (CoDi's vision range):
  1. v = (x + 1) / 2, then uint8 by truncation: floor(255 * v) (an `astype`, not rounding);
  2. PIL bicubic resize of the shortest edge to S; the long edge becomes int(S * long / short);
  3. center crop S x S (offsets (size - S) // 2);
  4. x 1/255, then the OpenAI mean / std.
Videos are processed frame by frame. PIL does the resize, so the numbers equal the original's; this is
NumPy (not jittable) and belongs to the input pipeline. Layouts: [B, H, W, 3] -> [B, S, S, 3] and
[B, F, H, W, 3] -> [B, F, S, S, 3], float32.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
FULL_SIZE = 224


def resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shortest edge to `size` (long edge truncated, as transformers)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _frame(frame: np.ndarray, size: int) -> np.ndarray:
    # float32 arithmetic, as torch produces (x + 1) / 2 and numpy scales it by 255 before the cast. The
    # clip only guards the uint8 cast against inputs outside [-1, 1]; in range it changes nothing.
    v = np.clip((frame.astype(np.float32) + np.float32(1)) / np.float32(2), 0, 1)
    u8 = (v * np.float32(255)).astype(np.uint8)
    height, width = resize_shape(u8.shape[0], u8.shape[1], size)
    u8 = np.asarray(Image.fromarray(u8).resize((width, height), resample=Image.BICUBIC))
    top, left = (height - size) // 2, (width - size) // 2
    u8 = u8[top:top + size, left:left + size]
    scaled = (u8 * (1 / 255)).astype(np.float32)
    return (scaled - OPENAI_MEAN) / OPENAI_STD


def _check(x: np.ndarray, rank: int, layout: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != rank:
        raise ValueError(f"expected {layout} with rank {rank}, got shape {x.shape}")
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels last ({layout}), got {x.shape[-1]}")
    if x.shape[-3] < 1 or x.shape[-2] < 1:
        raise ValueError(f"expected a non-empty image ({layout}), got shape {x.shape}")
    return x


def preprocess_images(images, size: int = FULL_SIZE) -> np.ndarray:
    """images [B, H, W, 3] in [-1, 1] -> CLIP pixel values [B, size, size, 3]."""
    images = _check(images, 4, "[B, H, W, 3]")
    return np.stack([_frame(img, size) for img in images]).astype(np.float32)


def preprocess_videos(videos, size: int = FULL_SIZE) -> np.ndarray:
    """videos [B, F, H, W, 3] in [-1, 1] -> CLIP pixel values [B, F, size, size, 3], frame by frame."""
    videos = _check(videos, 5, "[B, F, H, W, 3]")
    if videos.shape[1] < 1:
        raise ValueError("expected at least 1 frame per video, got 0")
    return np.stack([np.stack([_frame(f, size) for f in video]) for video in videos]).astype(np.float32)
