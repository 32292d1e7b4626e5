"""Reading and writing media files and bytes: images (PIL), video (ffmpeg via imageio-ffmpeg, GIF via PIL),
audio (soundfile, ffmpeg for containers soundfile cannot open).

Arrays: images uint8 [H, W, 3]; videos uint8 [T, H, W, 3] with a frame rate; audio float32 mono [N]
with a sample rate. Anything unreadable raises MediaError (a ValueError) naming the file and the cause.
"""
from __future__ import annotations

import io
import pathlib
import subprocess
import tempfile

import numpy as np
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
_GIF_FRAME_MS = b"frame_ms="


class MediaError(ValueError):
    """A media file or blob that cannot be decoded."""


def _rgb_uint8(array, name: str, rank: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != rank or array.shape[-1] != 3:
        expected = "[H, W, 3]" if rank == 3 else "[T, H, W, 3]"
        raise ValueError(f"{name}: expected RGB {expected}, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(np.asarray(array, np.float64) * 255.0), 0, 255).astype(np.uint8)
    return array


def encode_image(image, image_format: str = "PNG", quality: int = 95) -> bytes:
    """uint8 [H, W, 3] (or float in [0, 1]) -> PNG / JPEG / WEBP bytes."""
    buffer = io.BytesIO()
    options = {} if image_format.upper() == "PNG" else {"quality": quality}
    Image.fromarray(_rgb_uint8(image, "image", 3)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def decode_image(data: bytes, name: str = "image bytes") -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] (alpha and palettes dropped)."""
    if not data:
        raise MediaError(f"{name}: empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # PIL raises a zoo of types for broken files
        raise MediaError(f"{name}: unreadable image ({type(error).__name__}: {error})") from error


def read_image(path) -> np.ndarray:
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error})") from error
    return decode_image(data, str(path))


def write_image(path, image) -> None:
    path = pathlib.Path(path)
    image_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    path.write_bytes(encode_image(image, image_format))


def _read_gif(path: pathlib.Path) -> tuple[np.ndarray, float]:
    # GIF writers merge identical consecutive frames into one longer frame, so frames are expanded by
    # duration: in units of the frame time our writer records in the comment, else the shortest frame.
    with Image.open(path) as gif:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(gif):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(float(frame.info.get("duration") or 100))
        comment = gif.info.get("comment", b"")
    frame_ms = min(durations)
    if comment.startswith(_GIF_FRAME_MS):
        frame_ms = float(comment[len(_GIF_FRAME_MS):])
    repeats = [max(1, round(d / frame_ms)) for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0), 1000.0 / frame_ms


def _read_ffmpeg(path: pathlib.Path) -> tuple[np.ndarray, float]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]
    if not frames:
        raise MediaError(f"{path}: no video frames")
    return np.stack(frames), float(meta.get("fps") or 0.0)


def read_video(path) -> tuple[np.ndarray, float]:
    """A video file (MP4 / WEBM / AVI / MKV / MOV through ffmpeg, GIF through PIL) -> (uint8 [T,H,W,3], fps)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        return _read_gif(path) if path.suffix.lower() == ".gif" else _read_ffmpeg(path)
    except MediaError:
        raise
    except Exception as error:
        raise MediaError(f"{path}: unreadable video ({type(error).__name__}: {error})") from error


def decode_video(data: bytes, suffix: str = ".mp4", name: str = "video bytes") -> tuple[np.ndarray, float]:
    """Encoded video bytes (a whole container file) -> (uint8 [T,H,W,3], fps)."""
    if not data:
        raise MediaError(f"{name}: empty")
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        try:
            return read_video(handle.name)
        except MediaError as error:
            raise MediaError(f"{name}: {str(error).split(': ', 1)[-1]}") from error


def write_video(path, frames, fps: float) -> None:
    """uint8 [T,H,W,3] -> .gif (PIL, looping) or any ffmpeg container (.mp4 as H.264 yuv420p)."""
    path = pathlib.Path(path)
    frames = _rgb_uint8(frames, "video", 4)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(frame) for frame in frames]
        frame_ms = 1000.0 / fps
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(frame_ms), loop=0,
                       comment=_GIF_FRAME_MS + f"{frame_ms:.4f}".encode())
        return
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    # H.264 in yuv420p needs even sides; macro_block_size 2 pads odd sizes instead of rescaling.
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, quality=8, macro_block_size=2,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _read_audio_ffmpeg(path: pathlib.Path, sample_rate: int) -> np.ndarray:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1",
               "-ar", str(sample_rate), "-f", "f32le", "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError(f"{path}: no readable audio track ({message[-1] if message else 'ffmpeg failed'})")
    return np.frombuffer(result.stdout, np.float32).copy()


def read_audio(path, fallback_rate: int = 16000) -> tuple[np.ndarray, int]:
    """An audio file -> (float32 mono [N], sample rate). Channels are averaged.

    soundfile reads WAV / FLAC / OGG / MP3 at their own rate; containers it cannot open (MP4, M4A,
    WEBM, ...) are decoded by ffmpeg at `fallback_rate`.
    """
    import soundfile

    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        wave, rate = wave.mean(axis=1), int(rate)
    except Exception:  # soundfile cannot open this container; ffmpeg may
        wave, rate = _read_audio_ffmpeg(path, fallback_rate), int(fallback_rate)
    if wave.size == 0:
        raise MediaError(f"{path}: no audio samples")
    return np.ascontiguousarray(wave, np.float32), rate


def decode_audio(data: bytes, suffix: str = ".wav", name: str = "audio bytes",
                 fallback_rate: int = 16000) -> tuple[np.ndarray, int]:
    """Encoded audio bytes (a whole file) -> (float32 mono [N], sample rate)."""
    if not data:
        raise MediaError(f"{name}: empty")
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        try:
            return read_audio(handle.name, fallback_rate)
        except MediaError as error:
            raise MediaError(f"{name}: {str(error).split(': ', 1)[-1]}") from error


def write_audio(path, wave, sample_rate: int) -> None:
    """float mono [N] in [-1, 1] -> a 16-bit PCM file (format from the suffix: .wav, .flac, ...)."""
    import soundfile

    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"audio: expected a mono wave [N], got shape {wave.shape}")
    soundfile.write(str(path), np.clip(wave, -1.0, 1.0), int(sample_rate), subtype="PCM_16")
