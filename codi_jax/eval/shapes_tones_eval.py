"""The Shapes & Tones evaluation of a trained CoDi: requests for every cell, batch generation, oracle scores
and a picture (the results table: shapes_tones_report).

A cell is one kind of generation scored over the first N examples of the test split (shapes-and-tones.md,
"What is scored"):
  single      input -> output for the 12 ordered pairs of text, image, video, audio: conditional accuracy;
  multi       two inputs of the same example mixed -> one output: multi-condition accuracy (e.g. audio +
              text -> video must take the motion from the text and the onset from the audio);
  joint       one input -> two outputs generated together: conditional accuracy of each output, and joint
              coherence (agreement on shared attributes, video + audio onset agreement), each next to the
              same requests generated with `independent` (each output alone, same condition, same noise:
              exactly the single cells' generations of the same examples, so they are read from there
              instead of generated twice);
  zero_shot   a joint pair that latent alignment never trained together;
  wiring      text -> video + audio from a second latent-alignment run with the released code's context
              wiring (`own`: each modality reads its own environment encoding), against the paper's
              (`others`) in the joint cell.
Every cell also reports its seen and unseen (held-out color-shape) examples apart.

Flow (`evaluate`): export the inputs with the data layer's exporter, write one requests.jsonl per
pipeline, generate through the caller's `generate` (`codi_jax.sample.run_batch`: `python -m codi_jax.sample
--batch` in-process, the same code path), read the output files back with the oracle, score, and write
results.json and the PNG grid. Output folders that already hold a request.json are not generated again, so an
interrupted evaluation resumes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle, scoring
from codi_jax.models.catalogue import MODALITIES

# The paper's latent-alignment chain (codi-reference.md §10): text+image, then text+audio, then audio+video.
PAPER_TRAINED_PAIRS = (("text", "image"), ("text", "audio"), ("audio", "video"))
# Output pairs to pick the zero-shot cell from, in order of preference: the first one latent alignment did
# not train together, conditioned on the input that carries the most attributes the pair shares.
ZERO_SHOT_CANDIDATES = ((("video",), ("image", "audio")), (("audio",), ("image", "video")),
                        (("image",), ("text", "video")))
MULTI_CONDITIONS = ((("text", "image"), "video"), (("text", "audio"), "image"), (("image", "audio"), "text"),
                    (("audio", "text"), "video"))
JOINT = ((("text",), ("video", "audio")), (("text",), ("image", "audio")), (("audio",), ("video", "text")),
         (("image",), ("text", "audio")))
WIRING_CELL = (("text",), ("video", "audio"))
# Which exported file each input modality is read from: the GIF keeps the frames losslessly.
INPUT_FILES = {"image": "image.png", "video": "video.gif", "audio": "audio.wav"}
OUTPUT_FILES = {"image": "image.png", "video": "video.gif", "audio": "audio.wav", "text": "text.txt"}
MAIN, OWN = "main", "own"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One scored kind of generation; `pipeline` names the sampling config it runs on (MAIN or OWN)."""
    group: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    independent: bool = False
    pipeline: str = MAIN
    trained_together: bool | None = None

    @property
    def key(self) -> str:
        """Request-id prefix (ids allow letters, digits, '.', '_', '-')."""
        key = "_".join(self.inputs) + "-to-" + "_".join(self.outputs)
        if self.independent:
            key += ".independent"
        if self.pipeline != MAIN:
            key += f".{self.pipeline}"
        return key

    @property
    def title(self) -> str:
        title = " + ".join(self.inputs) + " -> " + " + ".join(self.outputs)
        if self.independent:
            title += " (independent)"
        if self.pipeline == OWN:
            title += " (wiring own)"
        return title

    def source(self, modality: str) -> "Cell":
        """The cell whose generations hold this cell's `modality` outputs. An independent output (generated
        alone, from the same condition and seed, hence the same noise) is the single cell's generation."""
        if self.independent:
            return Cell("single", self.inputs, (modality,), pipeline=self.pipeline)
        return self


def _pair(outputs: Sequence[str]) -> frozenset:
    return frozenset(outputs)


def make_cells(trained_pairs: Iterable[Sequence[str]] = PAPER_TRAINED_PAIRS, *, wiring_ablation: bool = True,
               independent_baselines: bool = True) -> list[Cell]:
    """Every cell of the evaluation. `trained_pairs` are latent alignment's objectives (pairs of
    modalities); they mark joint cells as trained together or zero-shot and pick the zero-shot cell."""
    trained = {_pair(p) for p in trained_pairs}
    cells = [Cell("single", (a,), (b,)) for a in MODALITIES for b in MODALITIES if a != b]
    cells += [Cell("multi", inputs, (output,)) for inputs, output in MULTI_CONDITIONS]
    for inputs, outputs in JOINT:
        together = _pair(outputs) in trained
        cells.append(Cell("joint", inputs, outputs, trained_together=together))
        if independent_baselines or (inputs, outputs) == WIRING_CELL:
            cells.append(Cell("joint", inputs, outputs, independent=True, trained_together=together))
    untrained = [(i, o) for i, o in ZERO_SHOT_CANDIDATES if _pair(o) not in trained]
    if not untrained:
        raise ValueError(f"latent alignment trained every candidate pair {sorted(map(sorted, trained))}; "
                         f"expected at least one of {[o for _, o in ZERO_SHOT_CANDIDATES]} left out for the "
                         "zero-shot cell")
    inputs, outputs = untrained[0]
    cells.append(Cell("zero_shot", inputs, outputs, trained_together=False))
    cells.append(Cell("zero_shot", inputs, outputs, independent=True, trained_together=False))
    if wiring_ablation:
        inputs, outputs = WIRING_CELL
        cells.append(Cell("wiring", inputs, outputs, pipeline=OWN,
                          trained_together=_pair(outputs) in trained))
    return cells


# ----------------------------------------------------------------------------------------------------
# Inputs and requests


def export_inputs(out, num: int, resolution: int = st.DEFAULT_RESOLUTION, split: str = "test") -> list[dict]:
    """Examples 0 .. num-1 of `split` as files in out/<i>/ (the data layer's exporter); their attributes.

    An export of at least `num` examples at the same resolution already in `out` is reused."""
    out = pathlib.Path(out)
    stamp = out / "export.json"
    wanted = {"split": split, "resolution": int(resolution)}
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if {k: done.get(k) for k in wanted} == wanted and done.get("num", 0) >= num:
            return read_attributes(out)[:num]
    st.export(split, num, out, resolution)
    stamp.write_text(json.dumps({**wanted, "num": int(num)}) + "\n")
    return read_attributes(out)


def read_attributes(inputs_dir) -> list[dict]:
    """attributes.jsonl of an export, in example order: {"color", "shape", "motion", "onset"} per example."""
    lines = pathlib.Path(inputs_dir, "attributes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [{k: r[k] for k in st.ATTRIBUTES} for r in records]


def request_id(cell: Cell, index: int) -> str:
    return f"{cell.key}-{index:04d}"


def build_requests(cells: Sequence[Cell], inputs_dir, num: int, *, sampler: str, steps: int,
                   guidance: float | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """{pipeline name: request records} for `num` examples of every cell, in the sampling CLI's JSONL fields.

    Example i gets seed `seed + i` in every cell, so a joint request and its independent twin (the single
    cells' requests, `Cell.source`) start from the same noise. Independent cells get no requests of their own."""
    inputs_dir = pathlib.Path(inputs_dir).resolve()
    records: dict[str, list[dict]] = {}
    for cell in cells:
        if cell.independent:
            continue
        for i in range(num):
            folder = inputs_dir / str(i)
            record = {"id": request_id(cell, i), "outputs": list(cell.outputs), "sampler": sampler,
                      "steps": int(steps), "seed": int(seed) + i}
            if guidance is not None:
                record["guidance"] = float(guidance)
            for modality in cell.inputs:
                if modality == "text":
                    record["text"] = (folder / "text.txt").read_text().strip()
                else:
                    record[modality] = str(folder / INPUT_FILES[modality])
            records.setdefault(cell.pipeline, []).append(record)
    return records


def write_requests(path, records: Sequence[Mapping]) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pending(records: Sequence[Mapping], out_dir) -> list[Mapping]:
    """The requests whose output folder has no request.json yet (the CLI writes it last)."""
    out_dir = pathlib.Path(out_dir)
    return [r for r in records if not (out_dir / r["id"] / "request.json").is_file()]


# ----------------------------------------------------------------------------------------------------
# Reading outputs back


def read_output(folder, modality: str):
    """A generated output from its file: image uint8 [H,W,3], video uint8 [F,H,W,3], audio float32 [N], text."""
    from codi_jax.data import media

    path = pathlib.Path(folder) / OUTPUT_FILES[modality]
    if modality == "image":
        return media.read_image(path)
    if modality == "video":
        return media.read_video(path)[0]
    if modality == "audio":
        wave, rate = media.read_audio(path)
        if rate != st.SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {rate} Hz; expected {st.SAMPLE_RATE} Hz")
        return wave
    return path.read_text(encoding="utf-8").strip()


def decode_outputs(records: Sequence[Mapping], out_dir) -> dict[str, dict[str, dict]]:
    """{request id: {output modality: oracle attributes}} read from out_dir/<id>/."""
    out_dir = pathlib.Path(out_dir)
    decoded = {}
    for record in records:
        folder = out_dir / record["id"]
        decoded[record["id"]] = {m: oracle.decode_file(folder / OUTPUT_FILES[m]) for m in record["outputs"]}
    return decoded


# ----------------------------------------------------------------------------------------------------
# Scores


def score_cell(cell: Cell, attributes: Sequence[Mapping], decoded: Mapping[str, Mapping[str, Mapping]]) -> dict:
    """Scores of one cell over examples 0 .. len(attributes)-1: conditional accuracy per output (overall,
    per attribute, seen / unseen) and, for two outputs, joint coherence."""
    outs = {m: [decoded[request_id(cell.source(m), i)][m] for i in range(len(attributes))] for m in cell.outputs}
    result = {"key": cell.key, "title": cell.title, "group": cell.group, "inputs": list(cell.inputs),
              "outputs": list(cell.outputs), "independent": cell.independent, "pipeline": cell.pipeline,
              "trained_together": cell.trained_together, "n": len(attributes),
              "conditional": {m: scoring.conditional_accuracy(cell.inputs, m, attributes, outs[m])
                              for m in cell.outputs}}
    if len(cell.outputs) > 1:
        result["joint"] = scoring.joint_coherence(outs)
    return result


def score(cells: Sequence[Cell], attributes: Sequence[Mapping],
          decoded: Mapping[str, Mapping[str, Mapping]]) -> list[dict]:
    return [score_cell(cell, attributes, decoded) for cell in cells]


# ----------------------------------------------------------------------------------------------------
# The picture

_TILE = 64
_GAP = 4
_LABEL_WIDTH = 320
_SPECTROGRAM_WIDTH = 192
# A dark-to-bright ramp (black, purple, orange, pale yellow) for spectrograms.
_RAMP = np.array([(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)], np.float64)


def spectrogram_image(wave, height: int = _TILE, width: int = _SPECTROGRAM_WIDTH,
                      dynamic_range: float = 8.0) -> np.ndarray:
    """uint8 [height, width, 3]: the log-mel spectrogram (codi_jax.data.mel) of a 16 kHz wave, low
    frequencies at the bottom, the top `dynamic_range` nats coloured."""
    from PIL import Image

    from codi_jax.data import mel

    wave = np.asarray(wave, np.float32)
    if wave.size <= mel.N_FFT // 2 + 1:
        wave = np.pad(wave, (0, mel.N_FFT // 2 + 2 - wave.size))
    spec = np.asarray(mel.log_mel(wave[None]))[0].T[::-1]
    level = np.clip((spec - (spec.max() - dynamic_range)) / dynamic_range, 0.0, 1.0)
    position = level * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def _tile(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((_TILE, _TILE), Image.NEAREST))


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def render_grid(rows: Sequence[tuple[str, Mapping, np.ndarray | None]], path, num_frames: int | None = None,
                max_bytes: int = 300_000) -> pathlib.Path:
    """A PNG, one row per request: a label, a picture of the input, the generated image, the video's frames
    and the spectrogram of the audio (blank where a request has no such output). `rows` = (label,
    {modality: output array or text}, input tile or None); generated text is appended to the label.
    A picture over `max_bytes` in true colour is stored with a 256-colour palette instead."""
    from PIL import Image, ImageDraw

    num_frames = num_frames or max([len(o["video"]) for _, o, _ in rows if "video" in o] or [1])
    columns = [("condition / generated text", _LABEL_WIDTH), ("input", _TILE), ("image", _TILE),
               ("video frames", num_frames * (_TILE + _GAP) - _GAP), ("audio (log-mel)", _SPECTROGRAM_WIDTH)]
    header = 16
    width = sum(w for _, w in columns) + _GAP * (len(columns) + 1)
    height = header + len(rows) * (_TILE + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    starts, x = [], _GAP
    for name, w in columns:
        draw.text((x, 2), name, fill=(0, 0, 0))
        starts.append(x)
        x += w + _GAP
    for r, (label, outputs, input_tile) in enumerate(rows):
        y = header + r * (_TILE + _GAP)
        text = label + (f' => "{outputs["text"]}"' if "text" in outputs else "")
        for k, line in enumerate(_wrap(text, 52)[:5]):
            draw.text((starts[0], y + 2 + 12 * k), line, fill=(0, 0, 0))
        if input_tile is not None:
            canvas.paste(Image.fromarray(_tile(input_tile)), (starts[1], y))
        if "image" in outputs:
            canvas.paste(Image.fromarray(_tile(outputs["image"])), (starts[2], y))
        if "video" in outputs:
            for f, frame in enumerate(outputs["video"][:num_frames]):
                canvas.paste(Image.fromarray(_tile(frame)), (starts[3] + f * (_TILE + _GAP), y))
        if "audio" in outputs:
            canvas.paste(Image.fromarray(spectrogram_image(outputs["audio"])), (starts[4], y))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _png(canvas)
    if len(data) > max_bytes:
        data = _png(canvas.quantize(colors=256))
    path.write_bytes(data)
    return path


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def input_tile(record: Mapping) -> np.ndarray | None:
    """A picture of a request's first media input: the image, the video's last frame (the object is
    visible there whatever the onset) or the audio's spectrogram."""
    from codi_jax.data import media

    if record.get("image"):
        return media.read_image(record["image"])
    if record.get("video"):
        return media.read_video(record["video"])[0][-1]
    if record.get("audio"):
        wave, _ = media.read_audio(record["audio"])
        return spectrogram_image(wave, width=_TILE)
    return None


def grid_rows(cells: Sequence[Cell], records: Mapping[str, Sequence[Mapping]], out_dirs: Mapping[str, str],
              index: int = 0) -> list[tuple[str, dict, np.ndarray | None]]:
    """(label, outputs read from files, input tile) for example `index` of every cell with an image, video
    or audio output, or a text output from several inputs."""
    by_id = {r["id"]: r for recs in records.values() for r in recs}
    rows = []
    for cell in cells:
        if not set(cell.outputs) & {"image", "video", "audio"} and len(cell.inputs) < 2:
            continue
        ids = {m: request_id(cell.source(m), index) for m in cell.outputs}
        record = by_id[ids[cell.outputs[0]]]
        folder = pathlib.Path(out_dirs[cell.pipeline])
        condition = "; ".join(f'"{record["text"]}"' if m == "text" else f"{m} #{index}" for m in cell.inputs)
        rows.append((f"{cell.title}: {condition}", {m: read_output(folder / ids[m], m) for m in cell.outputs},
                     input_tile(record)))
    return rows


# ----------------------------------------------------------------------------------------------------
# Everything


@dataclasses.dataclass
class EvalSettings:
    """How many examples and how they are generated; `resolution` of the exported conditioning inputs."""
    num_examples: int = 200
    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance: float | None = None
    seed: int = 0
    resolution: int = st.DEFAULT_RESOLUTION
    wiring_ablation: bool = True
    independent_baselines: bool = True
    progress: bool = False


def evaluate(sample_configs: Mapping[str, str], eval_dir, settings: EvalSettings, generate: Callable,
             trained_pairs: Iterable[Sequence[str]] = PAPER_TRAINED_PAIRS) -> dict:
    """Run the whole evaluation into `eval_dir` (inputs/, requests_<pipeline>.jsonl, outputs_<pipeline>/,
    results.json, grid.png). `sample_configs` maps MAIN (and OWN for the wiring ablation) to sampling
    config specs for `python -m codi_jax.sample --config`; `generate(spec, requests_jsonl, out_dir,
    progress=...)` writes each request's files (`codi_jax.sample.run_batch`: the CLI in this process).
    Returns {"cells": [...], "results": [...]}."""
    eval_dir = pathlib.Path(eval_dir)
    cells = make_cells(trained_pairs, wiring_ablation=settings.wiring_ablation and OWN in sample_configs,
                       independent_baselines=settings.independent_baselines)
    attributes = export_inputs(eval_dir / "inputs", settings.num_examples, settings.resolution)
    records = build_requests(cells, eval_dir / "inputs", settings.num_examples, sampler=settings.sampler,
                             steps=settings.steps, guidance=settings.guidance, seed=settings.seed)
    out_dirs = {name: eval_dir / f"outputs_{name}" for name in records}
    decoded = {}
    for name, recs in records.items():
        write_requests(eval_dir / f"requests_{name}.jsonl", recs)
        todo = pending(recs, out_dirs[name])
        if todo:
            todo_path = write_requests(eval_dir / f"pending_{name}.jsonl", todo)
            generate(sample_configs[name], todo_path, out_dirs[name], progress=settings.progress)
            todo_path.unlink()
        decoded.update(decode_outputs(recs, out_dirs[name]))
    results = score(cells, attributes, decoded)
    (eval_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    render_grid(grid_rows(cells, records, out_dirs), eval_dir / "grid.png")
    return {"cells": cells, "results": results, "grid": eval_dir / "grid.png"}
