"""The sampler's files: generation inputs read into model layouts, generated outputs written out.

Decoding and encoding of the containers is codi_jax.data.media's; this module adds what sampling
needs on top: the file type is checked against the modality it is given for, audio comes back at
16 kHz whatever its rate, every error is one line naming the file (the CLI prints it as is), and one
call writes a generation's outputs under their fixed names (image.png, video.mp4 + video.gif,
audio.wav, text.txt).
"""
from __future__ import annotations

import contextlib
import pathlib
import warnings
from typing import Mapping

import numpy as np

from codi_jax.data import media as _codec
from codi_jax.data.preprocess import TARGET_SAMPLE_RATE, resample_audio

MediaError = _codec.MediaError
AUDIO_RATE = TARGET_SAMPLE_RATE
SUFFIXES = {"image": _codec.IMAGE_SUFFIXES, "video": _codec.VIDEO_SUFFIXES, "audio": _codec.AUDIO_SUFFIXES}
OUTPUT_FILES = {"image": ("image.png",), "video": ("video.mp4", "video.gif"), "audio": ("audio.wav",),
                "text": ("text.txt",)}


@contextlib.contextmanager
def _ffmpeg_children():
    """ffmpeg runs in fork+exec children that never touch JAX's threads: JAX's fork warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_input(modality: str, path) -> np.ndarray:
    """A conditioning file: image -> uint8 [H, W, 3]; video -> uint8 [F, H, W, 3]; audio -> float32 [N] at 16 kHz."""
    if modality not in SUFFIXES:
        raise ValueError(f"no file reader for modality {modality!r}; expected one of {sorted(SUFFIXES)}")
    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{modality} {path}: no such file")
    if path.suffix.lower() not in SUFFIXES[modality]:
        raise MediaError(f"{modality} {path}: unsupported file type {path.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(SUFFIXES[modality])}")
    try:
        with _ffmpeg_children():
            if modality == "image":
                return _codec.read_image(path)
            if modality == "video":
                return _codec.read_video(path)[0]
            wave, rate = _codec.read_audio(path, fallback_rate=AUDIO_RATE)
            return resample_audio(wave, rate, AUDIO_RATE)
    except ValueError as error:
        raise MediaError(f"{modality} {path}: {_one_line(error).removeprefix(f'{path}: ')}") from error


def write_outputs(folder, outputs: Mapping, *, fps: float, sample_rate: int = AUDIO_RATE) -> list[pathlib.Path]:
    """Write {"image": uint8 [H,W,3], "video": uint8 [F,H,W,3], "audio": float32 [N], "text": str} into
    `folder` under OUTPUT_FILES' names; returns the paths written."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MediaError(f"output folder {folder}: cannot create it ({error})") from error
    written = []
    with _ffmpeg_children():
        for modality, value in outputs.items():
            for name in OUTPUT_FILES[modality]:
                path = folder / name
                if modality == "image":
                    _codec.write_image(path, value)
                elif modality == "video":
                    _codec.write_video(path, value, fps)
                elif modality == "audio":
                    _codec.write_audio(path, value, sample_rate)
                else:
                    path.write_text(value + "\n", encoding="utf-8")
                written.append(path)
    return written
