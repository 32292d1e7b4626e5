"""Shapes & Tones: a four-modality world generated from hidden attributes (spec: shapes-and-tones.md).

One example = (color, shape, motion, onset, start position, caption template), drawn deterministically
from (split, index). From those attributes we render an image, an 8-frame video, 1.024 s of 16 kHz audio
and a caption, each of which the oracle (`codi_jax.eval.oracle`) can read back by signal analysis.

    python -m codi_jax.data.shapes_tones export --split test --num 16 --out /tmp/st
writes DIR/i/{image.png, video.mp4, video.gif, audio.wav, text.txt} and DIR/attributes.jsonl.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
from typing import Iterable, Mapping

import numpy as np

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
ONSETS = (0, 1, 2, 3)
ATTRIBUTES = ("color", "shape", "motion", "onset")

PALETTE = np.array([(0.90, 0.15, 0.15), (0.15, 0.75, 0.25), (0.15, 0.30, 0.90), (0.90, 0.80, 0.15)],
                   np.float32)
PITCHES_HZ = (261.63, 329.63, 392.00, 523.25)
# (row, column) direction per motion; rows grow downwards, so "up" is towards row 0.
MOTION_DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
HELD_OUT = (("yellow", "triangle"), ("green", "square"))
SPLITS = ("train", "validation", "test")

NUM_FRAMES = 8
SAMPLE_RATE = 16000
NUM_SAMPLES = 16384
SAMPLES_PER_FRAME = NUM_SAMPLES // NUM_FRAMES
AMPLITUDE = 0.5
RAMP_SAMPLES = 160  # 10 ms at 16 kHz
MAX_HARMONIC_HZ = 7000.0
DEFAULT_RESOLUTION = 64
# Below this the object is a handful of pixels and the three shapes stop being distinguishable.
MIN_RESOLUTION = 16
VIDEO_FPS = NUM_FRAMES * SAMPLE_RATE / NUM_SAMPLES

TEMPLATES = (
    "a {color} {shape} moving {motion}",
    "the {shape} is {color} and it goes {motion}",
    "a {shape}, colored {color}, heading {motion}",
    "one {color} {shape} that slides {motion}",
    "watch the {color} {shape} travel {motion}",
)

# Seed streams: (world, split, index) so splits never share a seed.
_WORLD_SEED = 0x5A7E
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def object_size(resolution: int) -> int:
    """Side S of every shape's bounding box: round(0.3125 R) (20 px at 64)."""
    return _round_half_up(0.3125 * resolution)


def step_size(resolution: int) -> int:
    """Pixels the object moves per video frame: round(0.0625 R) (4 px at 64)."""
    return _round_half_up(0.0625 * resolution)


def is_held_out(color: str, shape: str) -> bool:
    """Whether (color, shape) is one of the two combinations kept out of train and validation."""
    return (color, shape) in HELD_OUT


def check_resolution(resolution: int) -> int:
    if int(resolution) != resolution or resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be an integer >= {MIN_RESOLUTION}, got {resolution}")
    return int(resolution)


@functools.lru_cache(maxsize=4096)
def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Boolean [height, width] mask of the ideal shape filling that box, sampled at pixel centres.

    circle: the inscribed ellipse; square: the whole box; triangle: isosceles, pointing up, base on
    the bottom edge and apex at the top centre. The renderer and the oracle's shape fit share it.
    Cached, so the returned array is read-only.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    y = (np.arange(height, dtype=np.float64) + 0.5)[:, None]
    x = (np.arange(width, dtype=np.float64) + 0.5)[None, :]
    if shape == "square":
        mask = np.ones((height, width), bool)
    elif shape == "circle":
        mask = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2 <= 1.0
    else:
        mask = np.abs(x - width / 2) <= (y / height) * (width / 2)
    mask.flags.writeable = False
    return mask


def caption(color: str, shape: str, motion: str, template: int = 0) -> str:
    """The caption of template `template` (0 .. len(TEMPLATES)-1) naming color, shape and motion."""
    for name, value, values in (("color", color, COLORS), ("shape", shape, SHAPES), ("motion", motion, MOTIONS)):
        if value not in values:
            raise ValueError(f"unknown {name} {value!r}; expected one of {values}")
    if not 0 <= int(template) < len(TEMPLATES):
        raise ValueError(f"template must be in [0, {len(TEMPLATES)}), got {template}")
    return TEMPLATES[int(template)].format(color=color, shape=shape, motion=motion)


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if int(index) != index or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index}")
    return np.random.default_rng([_WORLD_SEED, _SPLIT_SEEDS[split], int(index)])


def sample_attributes(split: str, index: int, resolution: int = DEFAULT_RESOLUTION) -> dict:
    """The hidden attributes of example (split, index): names, onset, start position (row, col), template."""
    resolution = check_resolution(resolution)
    rng = _rng(split, index)
    pairs = [(c, s) for c in COLORS for s in SHAPES if split == "test" or not is_held_out(c, s)]
    color, shape = pairs[rng.integers(len(pairs))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    onset = int(ONSETS[rng.integers(len(ONSETS))])
    template = int(rng.integers(len(TEMPLATES)))
    size, step = object_size(resolution), step_size(resolution)
    # The start position keeps the object inside the frame for all 8 frame positions, whatever the
    # onset, so the position says nothing about the onset.
    travel = (NUM_FRAMES - 1) * step
    d_row, d_col = MOTION_DIRECTIONS[motion]
    span = resolution - size + 1
    row_lo = travel if d_row < 0 else 0
    row_hi = span - (travel if d_row > 0 else 0)
    col_lo = travel if d_col < 0 else 0
    col_hi = span - (travel if d_col > 0 else 0)
    row = int(rng.integers(row_lo, row_hi))
    col = int(rng.integers(col_lo, col_hi))
    return {"color": color, "shape": shape, "motion": motion, "onset": onset,
            "position": (row, col), "template": template}


def _draw(canvas: np.ndarray, color: str, shape: str, row: int, col: int, size: int) -> None:
    mask = shape_mask(shape, size, size)
    rgb = np.round(PALETTE[COLORS.index(color)] * 255).astype(np.uint8)
    canvas[row:row + size, col:col + size][mask] = rgb


def render_image(attributes: Mapping, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """uint8 [R, R, 3]: the object at its start position on black."""
    resolution = check_resolution(resolution)
    image = np.zeros((resolution, resolution, 3), np.uint8)
    row, col = attributes["position"]
    _draw(image, attributes["color"], attributes["shape"], row, col, object_size(resolution))
    return image


def render_video(attributes: Mapping, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """uint8 [8, R, R, 3]: black before the onset, then the object moving one step per frame from its start."""
    resolution = check_resolution(resolution)
    video = np.zeros((NUM_FRAMES, resolution, resolution, 3), np.uint8)
    row, col = attributes["position"]
    d_row, d_col = MOTION_DIRECTIONS[attributes["motion"]]
    size, step = object_size(resolution), step_size(resolution)
    for frame in range(attributes["onset"], NUM_FRAMES):
        moved = frame - attributes["onset"]
        _draw(video[frame], attributes["color"], attributes["shape"],
              row + d_row * step * moved, col + d_col * step * moved, size)
    return video


def harmonics(shape: str, f0: float) -> list[tuple[int, float]]:
    """(harmonic number, signed amplitude) of the band-limited timbre of `shape` below 7 kHz."""
    if shape == "circle":
        return [(1, 1.0)]
    odd = [n for n in range(1, int(MAX_HARMONIC_HZ / f0) + 1, 2) if n * f0 < MAX_HARMONIC_HZ]
    if shape == "square":
        return [(n, 1.0 / n) for n in odd]
    return [(n, (-1.0) ** ((n - 1) // 2) / n ** 2) for n in odd]


def synthesize_audio(attributes: Mapping) -> np.ndarray:
    """float32 [16384] at 16 kHz: silence until frame `onset`, then the color's pitch in the shape's timbre."""
    start = SAMPLES_PER_FRAME * attributes["onset"]
    f0 = PITCHES_HZ[COLORS.index(attributes["color"])]
    t = np.arange(NUM_SAMPLES - start, dtype=np.float64) / SAMPLE_RATE
    tone = sum(a * np.sin(2 * np.pi * n * f0 * t) for n, a in harmonics(attributes["shape"], f0))
    tone *= AMPLITUDE / np.max(np.abs(tone))
    ramp = np.linspace(0.0, 1.0, RAMP_SAMPLES, endpoint=False)
    tone[:RAMP_SAMPLES] *= ramp
    tone[-RAMP_SAMPLES:] *= ramp[::-1]
    audio = np.zeros(NUM_SAMPLES, np.float32)
    audio[start:] = tone
    return audio


def attribute_indices(attributes: Mapping) -> dict[str, int]:
    """Names -> int indices into COLORS / SHAPES / MOTIONS (onset is its own index)."""
    return {"color": COLORS.index(attributes["color"]), "shape": SHAPES.index(attributes["shape"]),
            "motion": MOTIONS.index(attributes["motion"]), "onset": int(attributes["onset"])}


def generate(split: str, index: int, resolution: int = DEFAULT_RESOLUTION,
             modalities: Iterable[str] | None = None) -> dict:
    """Example `index` of `split`: image uint8 [R,R,3], video uint8 [8,R,R,3], audio float32 [16384],
    text str, attributes dict (color/shape/motion names, onset, position, template).

    `modalities` (subset of image, video, audio, text) skips rendering the others; attributes are
    always present.
    """
    wanted = {"image", "video", "audio", "text"} if modalities is None else set(modalities)
    unknown = wanted - {"image", "video", "audio", "text"}
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected image, video, audio, text")
    attributes = sample_attributes(split, index, resolution)
    example = {"attributes": attributes}
    if "image" in wanted:
        example["image"] = render_image(attributes, resolution)
    if "video" in wanted:
        example["video"] = render_video(attributes, resolution)
    if "audio" in wanted:
        example["audio"] = synthesize_audio(attributes)
    if "text" in wanted:
        example["text"] = caption(attributes["color"], attributes["shape"], attributes["motion"],
                                  attributes["template"])
    return example


def export(split: str, num: int, out: str | pathlib.Path, resolution: int = DEFAULT_RESOLUTION,
           start: int = 0) -> pathlib.Path:
    """Write examples start .. start+num-1 of `split` as media files for people to look at."""
    from codi_jax.data import media

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num):
        example = generate(split, start + i, resolution)
        folder = out / str(i)
        folder.mkdir(exist_ok=True)
        media.write_image(folder / "image.png", example["image"])
        media.write_video(folder / "video.mp4", example["video"], VIDEO_FPS)
        media.write_video(folder / "video.gif", example["video"], VIDEO_FPS)
        media.write_audio(folder / "audio.wav", example["audio"], SAMPLE_RATE)
        (folder / "text.txt").write_text(example["text"] + "\n")
        a = example["attributes"]
        lines.append(json.dumps({"id": str(i), "color": a["color"], "shape": a["shape"],
                                 "motion": a["motion"], "onset": a["onset"]}))
    (out / "attributes.jsonl").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m codi_jax.data.shapes_tones", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="write examples as PNG / MP4 / GIF / WAV / TXT")
    exporter.add_argument("--split", default="test", choices=SPLITS)
    exporter.add_argument("--num", type=int, default=16)
    exporter.add_argument("--out", required=True)
    exporter.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    exporter.add_argument("--start", type=int, default=0, help="index of the first example")
    args = parser.parse_args(argv)
    path = export(args.split, args.num, args.out, args.resolution, args.start)
    print(f"wrote {args.num} {args.split} examples to {path}")


if __name__ == "__main__":
    main()
