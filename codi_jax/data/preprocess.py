"""Per-example preprocessing shared by Shapes & Tones and real data (numpy, runs in the input pipeline).

image: shortest side resized to `size` (bicubic, antialiased), centre crop, uint8 -> float32 in [-1, 1].
video: `num_frames` frames sampled uniformly over the clip, each processed like an image.
audio: mono wave resampled to 16 kHz (polyphase), mean removed, peak normalised to 0.5 (AudioLDM's
       level), then cut or zero-padded to `num_samples`.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

TARGET_SAMPLE_RATE = 16000
AUDIO_PEAK = 0.5


def _check_rgb(array, name: str, rank: int) -> np.ndarray:
    array = np.asarray(array)
    layout = "[H, W, 3]" if rank == 3 else "[T, H, W, 3]"
    if array.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, got shape {array.shape}")
    if array.shape[-1] != 3:
        raise ValueError(f"{name}: expected 3 channels (RGB, channels-last {layout}), got {array.shape[-1]}")
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels in [0, 255], got {array.dtype}")
    return array


def resize_shortest_side(image, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 with its shortest side `size` (bicubic, antialiased), aspect kept."""
    image = _check_rgb(image, "image", 3)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC, reducing_gap=None))


def resize_center_crop(image, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: shortest side to `size`, then the centre square."""
    image = resize_shortest_side(image, size)
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def scale_to_unit_range(pixels) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return np.asarray(pixels, np.float32) / 127.5 - 1.0


def from_unit_range(pixels) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (clipped)."""
    return np.clip(np.round((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def preprocess_image(image, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [-1, 1]."""
    return scale_to_unit_range(resize_center_crop(image, size))


def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread uniformly over a clip (the centre of each of F equal spans)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if num_available < num_frames:
        raise ValueError(f"video has {num_available} frames, too few: expected at least {num_frames}")
    return np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


def preprocess_video(frames, num_frames: int, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [num_frames, size, size, 3] in [-1, 1]."""
    frames = _check_rgb(frames, "video", 4)
    picked = frames[sample_frame_indices(frames.shape[0], num_frames)]
    return np.stack([preprocess_image(frame, size) for frame in picked])


def _check_wave(wave, sample_rate) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"audio: expected a mono wave [N], got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"audio: expected float samples in [-1, 1], got {wave.dtype}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"audio: sample rate must be a positive integer in Hz, got {sample_rate}")
    return wave.astype(np.float32, copy=False)


def resample_audio(wave, sample_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a mono wave from `sample_rate` to `target_rate` Hz."""
    from scipy import signal

    wave = _check_wave(wave, sample_rate)
    sample_rate, target_rate = int(sample_rate), int(target_rate)
    if sample_rate == target_rate:
        return wave
    common = math.gcd(sample_rate, target_rate)
    return signal.resample_poly(wave, target_rate // common, sample_rate // common).astype(np.float32)


def normalize_audio(wave, peak: float = AUDIO_PEAK) -> np.ndarray:
    """Remove the mean, then scale so that max |wave| = peak (silence stays silence)."""
    wave = np.asarray(wave, np.float32)
    centred = wave - wave.mean()
    return (centred / (np.max(np.abs(centred)) + 1e-8) * peak).astype(np.float32)


def pad_or_cut(wave, num_samples: int) -> np.ndarray:
    """Keep the first `num_samples` samples, zero-padding at the end when shorter."""
    wave = np.asarray(wave, np.float32)
    if wave.shape[0] >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - wave.shape[0]))


def preprocess_audio(wave, sample_rate: int, num_samples: int, normalize: bool = True,
                     target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Mono wave at any rate -> float32 [num_samples] at `target_rate` (16 kHz), in [-1, 1]."""
    wave = resample_audio(wave, sample_rate, target_rate)
    if normalize:
        wave = normalize_audio(wave)
    return np.clip(pad_or_cut(wave, num_samples), -1.0, 1.0)
