"""The Shapes & Tones oracle: reads attributes back from images, videos, audio and text by signal analysis.

Every decoder returns a dict of the attributes its modality carries, each a value name (onset: an int) or
None where it finds nothing (no object, silence, no attribute word), which scores as wrong:
  image -> color, shape                 video -> color, shape, motion, onset
  audio -> color, shape, onset          text  -> color, shape, motion
Inputs are model-like: images / videos channels-last, uint8 in [0, 255] or float in `value_range`
(default [-1, 1], the batch and model layout; pass (0, 1) for decoded VAE output); audio a float wave at
any sample rate (16 kHz by default). How each decoder reads, and
why it survives blur, noise, colour shifts, compression and a mel round trip, is in shapes-and-tones.md
("Reading an output back") and next to the code.
"""
from __future__ import annotations

import collections
import pathlib
import re

import numpy as np
from scipy import ndimage

from codi_jax.data import media, preprocess
from codi_jax.data import shapes_tones as st

MODEL_RANGE = (-1.0, 1.0)
CARRIED = {"image": ("color", "shape"), "video": ("color", "shape", "motion", "onset"),
           "audio": ("color", "shape", "onset"), "text": ("color", "shape", "motion")}

# Foreground = brighter than half the object's typical brightness; "typical" is a high percentile of the
# per-pixel brightness (the object covers >= 4.9 % of a frame, so the 99th percentile lies inside it).
TYPICAL_PERCENTILE = 99.0
FOREGROUND_FRACTION = 0.5
# Below this typical brightness (on a [0, 1] scale) there is no object.
MIN_OBJECT_BRIGHTNESS = 0.15
# A frame shows the object when its area reaches this fraction of the clip's typical visible area.
VISIBLE_AREA_FRACTION = 0.5
MIN_OBJECT_PIXELS = 4

AUDIO_WINDOW = 256
ONSET_RMS_FRACTION = 0.25
SILENCE_RMS = 1e-3
NOISE_FLOOR_PERCENTILE = 10.0
PITCH_SEARCH_HZ = (200.0, 600.0)
BAND_HALF_WIDTH = 0.06
FLOOR_BAND_HZ = (100.0, 7500.0)
# (3 f0, 5 f0) band energies relative to the f0 band, dB: 1/n amplitudes for the square, 1/n^2 for the
# triangle; the sine has none, so it sits at the floor the measurements are clipped to.
RATIO_FLOOR_DB = -45.0
TIMBRE_TEMPLATES_DB = {"circle": (RATIO_FLOOR_DB, RATIO_FLOOR_DB),
                       "triangle": (-20 * np.log10(9.0), -20 * np.log10(25.0)),
                       "square": (-20 * np.log10(3.0), -20 * np.log10(5.0))}

_WORD = re.compile(r"[a-z]+")


def _unit_rgb(array, name: str, rank: int, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 pixels, or floats spanning `value_range`, channels-last, -> float64 in [0, 1]."""
    array = np.asarray(array)
    layout = "[H, W, 3]" if rank == 3 else "[T, H, W, 3]"
    if array.ndim != rank or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected channels-last RGB {layout}, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float pixels, got {array.dtype}")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return np.clip((np.asarray(array, np.float64) - low) / (high - low), 0.0, 1.0)


def _brightness(rgb: np.ndarray) -> np.ndarray:
    # The brightest channel: every palette colour has one channel near 0.8-0.9 on black.
    return rgb.max(axis=-1)


def _threshold(brightness: np.ndarray) -> float | None:
    flat = brightness.ravel()
    rank = int(round(TYPICAL_PERCENTILE / 100 * (flat.size - 1)))
    typical = float(np.partition(flat, rank)[rank])
    return None if typical < MIN_OBJECT_BRIGHTNESS else FOREGROUND_FRACTION * typical


def _largest_component(mask: np.ndarray) -> np.ndarray:
    # Noise specks and compression ringing form small separate blobs; the object is the biggest one.
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _nearest_color(mean_rgb: np.ndarray) -> str:
    # Nearest palette entry up to brightness (largest cosine): blur blends edge pixels with the black
    # background, which scales a colour without turning it.
    palette = st.PALETTE.astype(np.float64)
    cosine = palette @ mean_rgb / (np.linalg.norm(palette, axis=1) * (np.linalg.norm(mean_rgb) + 1e-12))
    return st.COLORS[int(np.argmax(cosine))]


def _best_shape(component: np.ndarray) -> str:
    # Ideal shapes placed on the foreground's bounding box; the one with the highest IoU wins.
    rows, cols = np.nonzero(component)
    box = component[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ious = []
    for shape in st.SHAPES:
        ideal = st.shape_mask(shape, *box.shape)
        ious.append(np.logical_and(ideal, box).sum() / np.logical_or(ideal, box).sum())
    return st.SHAPES[int(np.argmax(ious))]


def _read_object(rgb: np.ndarray, threshold: float) -> dict | None:
    """color, shape, area and centroid of the object in one frame, or None when there is none."""
    component = _largest_component(_brightness(rgb) > threshold)
    area = int(component.sum())
    if area < MIN_OBJECT_PIXELS:
        return None
    rows, cols = np.nonzero(component)
    return {"color": _nearest_color(rgb[component].mean(axis=0)), "shape": _best_shape(component),
            "area": area, "centroid": (float(rows.mean()), float(cols.mean()))}


def decode_image(image, value_range: tuple[float, float] = MODEL_RANGE) -> dict:
    """Image [H, W, 3] -> {"color", "shape"} (None where no object is found)."""
    rgb = _unit_rgb(image, "image", 3, value_range)
    threshold = _threshold(_brightness(rgb))
    found = None if threshold is None else _read_object(rgb, threshold)
    if found is None:
        return {"color": None, "shape": None}
    return {"color": found["color"], "shape": found["shape"]}


def _majority(values: list) -> str | None:
    return collections.Counter(values).most_common(1)[0][0] if values else None


def decode_video(video, value_range: tuple[float, float] = MODEL_RANGE) -> dict:
    """Video [T, H, W, 3] -> {"color", "shape", "motion", "onset"}.

    One threshold for the whole clip; onset = first frame whose object area reaches half the typical
    visible area; motion = dominant axis and sign of the centroid's travel from the onset frame to the
    last visible frame; color and shape by majority over the visible frames.
    """
    rgb = _unit_rgb(video, "video", 4, value_range)
    none = {"color": None, "shape": None, "motion": None, "onset": None}
    threshold = _threshold(_brightness(rgb))
    if threshold is None:
        return none
    objects = [_read_object(frame, threshold) for frame in rgb]
    areas = [o["area"] for o in objects if o is not None]
    if not areas:
        return none
    typical_area = float(np.median(areas))
    visible = [i for i, o in enumerate(objects) if o is not None and o["area"] >= VISIBLE_AREA_FRACTION * typical_area]
    first, last = visible[0], visible[-1]
    d_row = objects[last]["centroid"][0] - objects[first]["centroid"][0]
    d_col = objects[last]["centroid"][1] - objects[first]["centroid"][1]
    if max(abs(d_row), abs(d_col)) < 1.0:
        motion = None
    elif abs(d_row) > abs(d_col):
        motion = "down" if d_row > 0 else "up"
    else:
        motion = "right" if d_col > 0 else "left"
    return {"color": _majority([objects[i]["color"] for i in visible]),
            "shape": _majority([objects[i]["shape"] for i in visible]),
            "motion": motion, "onset": first}


def _band_energy(power: np.ndarray, freqs: np.ndarray, centre: float, floor: float) -> float:
    """Energy in the +-6 % band around `centre` above a per-bin noise floor."""
    band = (freqs >= centre * (1 - BAND_HALF_WIDTH)) & (freqs <= centre * (1 + BAND_HALF_WIDTH))
    return max(float(power[band].sum()) - floor * int(band.sum()), 0.0)


def decode_audio(wave, sample_rate: int = st.SAMPLE_RATE) -> dict:
    """Mono wave [N] -> {"color", "shape", "onset"}.

    onset = first 256-sample window whose RMS reaches a quarter of the loudest window's, rounded to the
    nearest video frame boundary (2048 samples); color = palette pitch nearest in semitones to the
    spectral peak in 200-600 Hz (its power centroid within a semitone); shape = timbre template nearest
    to the energies in +-6 % bands at 3 f0 and 5 f0 relative to the band at f0.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"audio: expected a mono wave [N], got shape {wave.shape}")
    wave = preprocess.resample_audio(np.asarray(wave, np.float32), sample_rate, st.SAMPLE_RATE).astype(np.float64)
    wave = wave - wave.mean()
    windows = wave[:wave.size // AUDIO_WINDOW * AUDIO_WINDOW].reshape(-1, AUDIO_WINDOW)
    power = np.mean(windows ** 2, axis=1) if windows.size else np.zeros(1)
    if power.max() < SILENCE_RMS ** 2:
        return {"color": None, "shape": None, "onset": None}
    # The quarter-RMS rule is applied to the power above the noise floor (a low percentile of the window
    # powers), so hiss in the silent part does not count as the tone; on clean audio the floor is 0.
    excess = power - np.percentile(power, NOISE_FLOOR_PERCENTILE)
    first = int(np.argmax(excess >= ONSET_RMS_FRACTION ** 2 * excess.max()))
    start = first * AUDIO_WINDOW
    onset = (start + st.SAMPLES_PER_FRAME // 2) // st.SAMPLES_PER_FRAME

    tone = wave[start:]
    n_fft = 1 << int(np.ceil(np.log2(4 * tone.size)))
    power = np.abs(np.fft.rfft(tone * np.hanning(tone.size), n=n_fft)) ** 2  # the spectrum from here on
    freqs = np.fft.rfftfreq(n_fft, 1.0 / st.SAMPLE_RATE)
    search = np.nonzero((freqs >= PITCH_SEARCH_HZ[0]) & (freqs <= PITCH_SEARCH_HZ[1]))[0]
    peak = freqs[search[np.argmax(power[search])]]
    near = (freqs >= peak * 2 ** (-1 / 12)) & (freqs <= peak * 2 ** (1 / 12))
    pitch = float(np.sum(freqs[near] * power[near]) / np.sum(power[near]))
    semitones = np.abs(12 * np.log2(pitch / np.asarray(st.PITCHES_HZ)))
    color = st.COLORS[int(np.argmin(semitones))]

    f0 = st.PITCHES_HZ[st.COLORS.index(color)]
    # Broadband noise puts energy in every band; the median bin of the spectrum (harmonics occupy few
    # bins) measures it, and it is taken out of each band so a noisy sine does not read as a triangle.
    # A noise bin's power is exponentially distributed, whose mean is its median / ln 2.
    floor = float(np.median(power[(freqs >= FLOOR_BAND_HZ[0]) & (freqs <= FLOOR_BAND_HZ[1])])) / np.log(2)
    fundamental = _band_energy(power, freqs, f0, floor) + 1e-30
    ratios = np.array([10 * np.log10(_band_energy(power, freqs, n * f0, floor) / fundamental + 1e-30)
                       for n in (3, 5)])
    ratios = np.clip(ratios, RATIO_FLOOR_DB, 0.0)
    distances = {shape: float(np.sum((ratios - np.asarray(t)) ** 2)) for shape, t in TIMBRE_TEMPLATES_DB.items()}
    return {"color": color, "shape": min(distances, key=distances.get), "onset": int(onset)}


def decode_text(text: str) -> dict:
    """Caption -> {"color", "shape", "motion"}: the attribute word of each kind, None unless exactly one."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    words = set(_WORD.findall(text.lower()))
    out = {}
    for name, values in (("color", st.COLORS), ("shape", st.SHAPES), ("motion", st.MOTIONS)):
        found = [v for v in values if v in words]
        out[name] = found[0] if len(found) == 1 else None
    return out


def decode(modality: str, value, **kwargs) -> dict:
    """Dispatch to decode_<modality> (image, video, audio, text)."""
    decoders = {"image": decode_image, "video": decode_video, "audio": decode_audio, "text": decode_text}
    if modality not in decoders:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(decoders)}")
    return decoders[modality](value, **kwargs)


def decode_file(path) -> dict:
    """Decode a PNG/JPEG image, MP4/GIF/WEBM video, WAV/FLAC audio or TXT caption file by its suffix."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix in media.VIDEO_SUFFIXES:
        return decode_video(media.read_video(path)[0])
    if suffix in media.IMAGE_SUFFIXES:
        return decode_image(media.read_image(path))
    if suffix in media.AUDIO_SUFFIXES:
        wave, rate = media.read_audio(path)
        return decode_audio(wave, rate)
    if suffix == ".txt":
        return decode_text(path.read_text())
    raise ValueError(f"{path}: unknown file type {suffix!r}; expected an image "
                     f"{media.IMAGE_SUFFIXES}, video {media.VIDEO_SUFFIXES}, audio {media.AUDIO_SUFFIXES} or .txt")
