"""Shared by the real-data converters: media (paths or bytes) -> one record in the shared schema, and the
skip counter that aborts a conversion when too much of the input is unreadable."""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import numpy as np

from codi_jax.data import media, preprocess, records


class ConversionAborted(RuntimeError):
    """Too many unreadable inputs: the source is probably broken or mis-specified."""


@dataclasses.dataclass
class ConvertOptions:
    """How media are stored. Sizes are shortest sides in pixels (0 keeps the original size)."""

    image_size: int = 512
    image_format: str = "JPEG"
    video_frames: int = 8
    video_size: int = 256
    audio_rate: int = 16000
    max_audio_seconds: float = 10.24
    audio_from_video: bool = False
    max_skip_fraction: float = 0.05
    # The skip fraction is only judged once this many samples were seen (and always at the end).
    min_samples_before_abort: int = 100


class SkipCounter:
    """Counts written and skipped samples; raises ConversionAborted past the allowed skip fraction."""

    def __init__(self, options: ConvertOptions, source: str):
        self.options, self.source = options, source
        self.written, self.skipped = 0, 0
        self.errors: list[str] = []

    def ok(self) -> None:
        self.written += 1

    def skip(self, key: str, error: Exception) -> None:
        self.skipped += 1
        if len(self.errors) < 5:
            self.errors.append(f"{key}: {error}")
        if self.written + self.skipped >= self.options.min_samples_before_abort:
            self.check()

    def check(self) -> None:
        seen = self.written + self.skipped
        if seen and self.skipped / seen > self.options.max_skip_fraction:
            raise ConversionAborted(
                f"{self.source}: aborting, {self.skipped} of {seen} samples unreadable "
                f"({100 * self.skipped / seen:.1f}% > {100 * self.options.max_skip_fraction:.1f}% allowed); "
                f"first errors: {'; '.join(self.errors)}")

    def summary(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "errors": list(self.errors)}


def _at_most(image: np.ndarray, size: int) -> np.ndarray:
    """Downscale so the shortest side is at most `size` (0: keep); never upscale."""
    if size <= 0 or min(image.shape[:2]) <= size:
        return image
    return preprocess.resize_shortest_side(image, size)


def _as_path(value, suffix: str, stack: list) -> pathlib.Path:
    """A path for `value` (a path, or bytes spilled to a temporary file kept alive by `stack`)."""
    if isinstance(value, (bytes, bytearray)):
        handle = tempfile.NamedTemporaryFile(suffix=suffix)
        handle.write(value)
        handle.flush()
        stack.append(handle)
        return pathlib.Path(handle.name)
    return pathlib.Path(value)


def build_record(key: str, options: ConvertOptions, *, image=None, video=None, audio=None, caption: str = "",
                 suffixes: dict | None = None) -> dict:
    """One record from media given as paths or bytes (`suffixes` names the file type of bytes).

    Raises media.MediaError (a ValueError) when any given medium is unreadable.
    """
    suffixes = suffixes or {}
    temporaries: list = []
    try:
        fields = {"caption": caption}
        if image is not None:
            pixels = media.decode_image(bytes(image), f"{key} image") if isinstance(image, (bytes, bytearray)) \
                else media.read_image(image)
            fields["image"] = media.encode_image(_at_most(pixels, options.image_size), options.image_format)
        video_path = None
        if video is not None:
            video_path = _as_path(video, suffixes.get("video", ".mp4"), temporaries)
            frames, fps = media.read_video(video_path)
            picked = preprocess.sample_frame_indices(frames.shape[0], options.video_frames)
            fields["video"] = [media.encode_image(_at_most(frames[i], options.video_size), options.image_format)
                               for i in picked]
            duration = frames.shape[0] / fps if fps > 0 else 0.0
            fields["video_fps"] = options.video_frames / duration if duration > 0 else 0.0
        audio_path = None
        if audio is not None:
            audio_path = _as_path(audio, suffixes.get("audio", ".wav"), temporaries)
        elif options.audio_from_video and video_path is not None:
            audio_path = video_path
        if audio_path is not None:
            wave, rate = media.read_audio(audio_path, options.audio_rate)
            wave = preprocess.resample_audio(wave, rate, options.audio_rate)
            fields["audio"] = wave[:int(options.max_audio_seconds * options.audio_rate)]
            fields["audio_sample_rate"] = options.audio_rate
        return records.make_record(key, **fields)
    finally:
        for handle in temporaries:
            handle.close()


def add_option_flags(parser) -> None:
    """The ConvertOptions as command-line flags (shared by the converters' CLIs)."""
    defaults = ConvertOptions()
    for field in dataclasses.fields(ConvertOptions):
        value = getattr(defaults, field.name)
        if isinstance(value, bool):
            parser.add_argument(f"--{field.name}", action="store_true", default=value)
        else:
            parser.add_argument(f"--{field.name}", type=type(value), default=value)


def options_from_flags(args) -> ConvertOptions:
    return ConvertOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ConvertOptions)})


def print_summary(result: dict, split: str) -> None:
    print(f"wrote {result['written']} records to {result['path']} (split {split}); "
          f"skipped {result['skipped']} unreadable")
    for error in result["errors"]:
        print(f"  skipped {error}")
