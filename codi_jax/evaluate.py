"""The paper's evaluation tables for a checkpoint: `python -m codi_jax.evaluate --config
configs/evaluate.py:<task> --checkpoint DIR [--out DIR] [--random-init] [--config.key=value ...]`.

A task is a list of cells (inputs -> outputs, joint or independent). For every cell the examples of the
evaluation set are turned into generation requests (seed = generation.seed + example index), generated
in chunks through `CoDiPipeline.generate_batch`, brought to the evaluation sizes and fed to the metrics
as they arrive, so neither the generations nor the real set are ever held whole:
  fid / is       InceptionV3 pool features / logits (pytorch-fid's network), against the real examples
  clip_score     CLIP image vs caption          clipsim   CLIP of every frame vs caption
  fvd            I3D logits (FVD's network), clips repeated up to 16 frames, against the real examples
  fd / is_audio / kl   PANNs CNN14 (AudioLDM's evaluation), kl paired with each example's real audio
  fad            VGGish embeddings per 0.96 s
  bleu4 / meteor / rouge_l / cider / spice / spider   pycocoevalcap against the example's captions
  coherence      cosine similarity of CLIP / CLAP embeddings between outputs generated together
  oracle         Shapes & Tones attributes read back from the outputs (conditional accuracy)
Feature extraction is jitted and sharded over the mesh's data axis; the real set's statistics are
cached under `cache_dir`, keyed by weights, data and preprocessing. Results go to OUT/results.json,
OUT/results.md and TensorBoard scalars in OUT.

Bad input (unknown task or metric, a missing weights file, dataset or checkpoint, ...) prints one line
on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import pathlib
import re
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from codi_jax import config_files
from codi_jax.eval import metrics_report

EXIT_BAD_INPUT = 2
AUDIO_RATE = 16000
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice", "spider")
# Which output modality each metric reads.
METRIC_OUTPUT = {"fid": "image", "is": "image", "clip_score": "image", "clipsim": "video", "fvd": "video",
                 "fd": "audio",
                 "is_audio": "audio", "kl": "audio", "fad": "audio", **{m: "text" for m in CAPTION_METRICS}}
# The paper's SIM-XY names: the first letter is the earlier modality in this order.
SIM_ORDER = ("video", "image", "audio", "text")


class UsageError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Cell:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    independent: bool = False

    @property
    def title(self) -> str:
        title = " + ".join(self.inputs) + " -> " + " + ".join(self.outputs)
        return title + (" (independent)" if self.independent else "")


def _joint_cells() -> list[Cell]:
    pairs = ((("audio",), ("image", "text")), (("image",), ("audio", "text")), (("text",), ("video", "audio")),
             (("audio",), ("video", "text")))
    return [Cell(i, o, independent) for i, o in pairs for independent in (False, True)]


CELLS = {
    "text_image": [Cell(("text",), ("image",))],
    "text_video": [Cell(("text",), ("video",))],
    "text_audio": [Cell(("text",), ("audio",))],
    "image_text": [Cell(("image",), ("text",))],
    "audio_text": [Cell(("audio",), ("text",))],
    "video_text": [Cell(("video",), ("text",))],
    "multi_image": [Cell(("text",), ("image",)), Cell(("audio",), ("image",)), Cell(("text", "audio"), ("image",))],
    "multi_video": [Cell(("text",), ("video",)), Cell(("text", "audio"), ("video",)),
                    Cell(("text", "image"), ("video",)), Cell(("text", "audio", "image"), ("video",))],
    "joint": _joint_cells(),
    "shapes_tones": [Cell(("text",), ("image",)), Cell(("text",), ("audio",)), Cell(("text",), ("video",))],
}


# ----------------------------------------------------------------------------------------------------
# Examples


class Examples:
    """The evaluation set: example i -> {"id", "captions", "text", "image", "video", "audio", "attributes"}
    at the evaluation sizes, decoded when asked for (so a chunk at a time is in memory)."""

    def __init__(self, data):
        from codi_jax.data import records

        self.data = data
        if data.dataset == "shapes_tones":
            self._groups = [[i] for i in range(int(data.num_examples))]
            self._source = None
        elif data.dataset == "records":
            if not data.path or not pathlib.Path(data.path).is_dir():
                raise UsageError(f"data.path: {data.path!r} is not a records directory (data_pipelines/README.md "
                                 "says how to prepare one)")
            try:
                self._source = records.RecordSource(data.path, data.split)
            except ValueError as err:
                raise UsageError(f"data: {err}") from None
            self._groups = self._group(int(data.num_examples))
        else:
            raise UsageError(f"data.dataset: {data.dataset!r} is not 'records' or 'shapes_tones'")
        if not self._groups:
            raise UsageError("data: the evaluation set is empty")

    def _group(self, limit: int) -> list[list[int]]:
        """Record indices per example: records whose ids share `group_pattern`'s key are one example."""
        if not self.data.group_pattern:
            return [[i] for i in range(min(limit, len(self._source)))]
        pattern = re.compile(self.data.group_pattern)
        groups: dict[str, list[int]] = {}
        for index in range(len(self._source)):
            record_id = self._source[index]["id"].decode()
            match = pattern.match(record_id)
            key = match.group(1) if match else record_id
            if key not in groups and len(groups) == limit:
                continue
            groups.setdefault(key, []).append(index)
        return list(groups.values())

    def __len__(self) -> int:
        return len(self._groups)

    def fingerprint(self) -> dict:
        d = self.data
        return {"dataset": d.dataset, "path": os.path.abspath(d.path) if d.path else "", "split": d.split,
                "n": len(self), "group": d.group_pattern, "image": d.image_size, "frames": d.video_frames,
                "audio": d.audio_seconds, "resolution": d.shapes_tones_resolution}

    def get(self, index: int, modalities: Sequence[str]) -> dict:
        from codi_jax.data import records
        from codi_jax.data import shapes_tones as st

        wanted = [m for m in modalities if m != "text"]
        if self._source is None:
            raw = st.generate(self.data.split, index, int(self.data.shapes_tones_resolution), [*wanted, "text"])
            example = {"id": f"{self.data.split}-{index}", "captions": [raw["text"]],
                       "attributes": raw["attributes"], "audio_sample_rate": st.SAMPLE_RATE,
                       **{m: raw[m] for m in wanted}}
        else:
            group = self._groups[index]
            first = records.decode_record(self._source[group[0]], [*wanted, "text"])
            captions = [first["text"]] + [records.decode_record(self._source[i], ["text"])["text"] for i in group[1:]]
            example = {**first, "captions": [c for c in captions if c]}
        example["text"] = example["captions"][0] if example["captions"] else ""
        return self.normalise(example, wanted)

    def normalise(self, example: dict, modalities: Sequence[str]) -> dict:
        """Media at the evaluation sizes: images and frames centre-cropped to image_size, at most
        video_frames frames spread over the clip, audio at 16 kHz padded or cut to audio_seconds."""
        from codi_jax.data.preprocess import preprocess_audio, resize_center_crop, sample_frame_indices

        size = int(self.data.image_size)
        if "image" in modalities:
            example["image"] = resize_center_crop(example["image"], size)
        if "video" in modalities:
            video = example["video"]
            # Generated clips may be shorter than video_frames: CLIPSIM and CLIP read frames one by one.
            video = video[sample_frame_indices(video.shape[0], min(video.shape[0], int(self.data.video_frames)))]
            example["video"] = np.stack([resize_center_crop(f, size) for f in video])
        if "audio" in modalities:
            example["audio"] = preprocess_audio(example["audio"], int(example["audio_sample_rate"]),
                                                self.audio_samples, normalize=False)
        return example

    @property
    def audio_samples(self) -> int:
        return int(round(float(self.data.audio_seconds) * AUDIO_RATE))


def normalise_outputs(outputs: Mapping, examples: Examples) -> dict:
    """Generated outputs at the evaluation sizes, as the real examples are."""
    return examples.normalise(dict(outputs, audio_sample_rate=AUDIO_RATE), [m for m in outputs if m != "text"])


# ----------------------------------------------------------------------------------------------------
# Metric networks


class MetricNetworks:
    """The feature extractors a task needs, built on first use from local weights (or random ones)."""

    def __init__(self, config, mesh, pipe=None):
        self.config, self.mesh, self.pipe = config, mesh, pipe
        self._built: dict = {}

    def _params(self, name: str, model, inputs, convert):
        from codi_jax.eval.metrics import torch_weights

        abstract = torch_weights.abstract(model, *inputs)
        if self.config.random_metric_weights:
            return random_params(abstract, np.random.default_rng(0))
        return torch_weights.load_params(os.path.expanduser(self.config.weights[name]), abstract, convert, name,
                                         subset=True)

    def weights_fingerprint(self, name: str) -> str:
        """What fixes a network's features: its weights file (or 'random') and, for InceptionV3, the block."""
        variant = f"dims{self.config.fid_dims}" if name == "inception" else ""
        if self.config.random_metric_weights:
            return f"random:{variant}"
        path = pathlib.Path(os.path.expanduser(self.config.weights[name]))
        return f"{path.resolve()}:{path.stat().st_size}:{int(path.stat().st_mtime)}:{variant}"

    def get(self, name: str):
        """The FeatureExtractor of `name` (inception, panns, vggish, i3d) or the CLIP / CLAP Embedder."""
        if name in self._built:
            return self._built[name]
        from codi_jax.eval.metrics import i3d, inception, panns, vggish
        from codi_jax.eval.metrics.extract import FeatureExtractor

        batch = int(self.config.feature_batch_size)
        if name == "embedder":
            from codi_jax.eval.metrics.similarity import Embedder

            nets, variables = self.pipe.nets, self.pipe.variables
            built = Embedder(nets.clip, variables["clip"], self.pipe.tokenizers["clip"], self.mesh, batch,
                             nets.clap, variables["clap"])
        else:
            module = {"inception": inception, "panns": panns, "vggish": vggish, "i3d": i3d}[name]
            model = {"inception": lambda: inception.InceptionV3(int(self.config.fid_dims),
                                                                logits="is" in self.config.metrics),
                     "panns": panns.Cnn14, "vggish": vggish.VGGish, "i3d": i3d.InceptionI3d}[name]()
            params = self._params(name, model, module.init_inputs(), module.convert_state_dict)
            built = FeatureExtractor(lambda p, x, model=model: model.apply({"params": p}, x), params, self.mesh,
                                     batch)
        self._built[name] = built
        return built

    def features(self, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Features of any number of examples, through the extractor's fixed batch."""
        extractor = self.get(name)
        if name == "panns":
            from codi_jax.eval.metrics import panns

            batch = np.stack([panns.prepare(w) for w in batch])
        if name == "i3d":
            from codi_jax.eval.metrics import i3d

            batch = i3d.repeat_frames(batch)
        size = extractor.per_host_batch
        outs = list(extractor.stream(batch[i:i + size] for i in range(0, len(batch), size)))
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def random_params(abstract, rng: np.random.Generator) -> dict:
    """Random metric-network weights from shapes alone (no compile): He-normal kernels, so activations
    keep their scale through the ReLU stacks, identity batch norms. For tests and timing only."""
    from flax import traverse_util

    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(abstract)).items():
        shape = tuple(leaf.shape)
        if len(shape) >= 2:
            flat[path] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)
        else:
            flat[path] = np.full(shape, 1.0 if path[-1] in ("scale", "var") else 0.0, np.float32)
    return traverse_util.unflatten_dict(flat)


# Which network and which of its outputs each distribution metric compares, and the modality it reads.
DISTRIBUTIONS = {"fid": ("inception", "pool", "image"), "fd": ("panns", "embedding", "audio"),
                 "fad": ("vggish", "embedding", "audio"), "fvd": ("i3d", "logits", "video")}


def real_statistics(metric: str, examples: Examples, nets: MetricNetworks, cache_dir, chunk: int,
                    progress: bool) -> dict:
    """{"stats": Statistics of the real examples' features, "logits": per-example logits (PANNs, for KL)},
    from the cache when the same weights, data and preprocessing were fitted before."""
    from codi_jax.eval.metrics import frechet

    network, output, modality = DISTRIBUTIONS.get(metric, ("panns", "embedding", "audio"))
    key = frechet.fingerprint(network=network, weights=nets.weights_fingerprint(network), **examples.fingerprint())
    cache = pathlib.Path(os.path.expanduser(cache_dir)) / f"{network}-{key}"
    stats = frechet.Statistics.load(cache.with_suffix(".npz"), key)
    logits_file = cache.with_name(cache.name + "-logits.npy")
    if stats is not None and (network != "panns" or logits_file.is_file()):
        return {"stats": stats, "logits": np.load(logits_file) if network == "panns" else None}
    running, logits = frechet.RunningStatistics(), []
    for start in _progress(range(0, len(examples), chunk), f"real {network} features", progress):
        batch = [examples.get(i, [modality]) for i in range(start, min(start + chunk, len(examples)))]
        features = nets.features(network, np.stack([e[modality] for e in batch]))
        running.add(features[output].reshape(-1, features[output].shape[-1]))
        if network == "panns":
            logits.append(features["logits"])
    stats = running.result()
    stats.save(cache.with_suffix(".npz"), key)
    if network == "panns":
        np.save(logits_file, np.concatenate(logits))
    return {"stats": stats, "logits": np.concatenate(logits) if logits else None}


def _progress(iterable, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled)


# ----------------------------------------------------------------------------------------------------
# One cell


class CellScores:
    """Running state of every metric of one cell, fed chunk by chunk."""

    def __init__(self, cell: Cell, metrics: Sequence[str], nets: MetricNetworks, config):
        from codi_jax.eval.metrics import frechet

        self.cell, self.nets, self.config = cell, nets, config
        self.metrics = [m for m in metrics if m in ("coherence", "oracle") or METRIC_OUTPUT[m] in cell.outputs]
        self.running = {m: frechet.RunningStatistics() for m in self.metrics if m in DISTRIBUTIONS}
        self.logits: dict[str, list] = {"is": [], "is_audio": []}
        self.sums: dict[str, list] = {}
        self.predictions: dict[str, str] = {}
        self.references: dict[str, list[str]] = {}
        self.oracle: dict[str, list] = {m: [] for m in cell.outputs}
        self.attributes: list = []
        self.count = 0

    def _add_mean(self, name: str, values) -> None:
        total = self.sums.setdefault(name, [0.0, 0])
        total[0] += float(np.sum(values))
        total[1] += int(np.size(values))

    def add(self, generated: Sequence[dict], examples: Sequence[dict]) -> None:
        from codi_jax.eval.metrics import scores

        nets, metrics = self.nets, set(self.metrics)
        self.count += len(generated)
        stack = lambda m: np.stack([g[m] for g in generated])  # noqa: E731
        if metrics & {"fid", "is"}:
            features = nets.features("inception", stack("image"))
            if "fid" in metrics:
                self.running["fid"].add(features["pool"])
            if "is" in metrics:
                self.logits["is"].append(features["logits"])
        if metrics & {"fd", "is_audio", "kl"}:
            features = nets.features("panns", stack("audio"))
            if "fd" in metrics:
                self.running["fd"].add(features["embedding"])
            self.logits["is_audio"].append(features["logits"])
        if "fvd" in metrics:
            self.running["fvd"].add(nets.features("i3d", stack("video"))["logits"])
        if "fad" in metrics:
            embedding = nets.features("vggish", stack("audio"))["embedding"]
            self.running["fad"].add(embedding.reshape(-1, embedding.shape[-1]))
        captions = [e["text"] for e in examples]
        if metrics & {"clip_score", "clipsim"}:
            text = nets.get("embedder").text(captions)
            if "clip_score" in metrics:
                image = nets.get("embedder").images(stack("image"))
                self._add_mean("clip_score", 100.0 * np.maximum(scores.cosine(image, text), 0.0))
            if "clipsim" in metrics:
                frames = nets.get("embedder").frames(stack("video"))
                n, f, d = frames.shape
                self._add_mean("clipsim", scores.cosine(frames.reshape(n * f, d), np.repeat(text, f, axis=0)))
        if metrics & set(CAPTION_METRICS):
            for g, e in zip(generated, examples):
                self.predictions[e["id"]] = g["text"]
                self.references[e["id"]] = e["captions"]
        if "coherence" in metrics and len(self.cell.outputs) > 1:
            embedded = {m: self._embed(m, [g[m] for g in generated]) for m in self.cell.outputs}
            a, b = sorted(self.cell.outputs, key=SIM_ORDER.index)
            self._add_mean(f"SIM-{a[0].upper()}{b[0].upper()}", scores.cosine(embedded[a], embedded[b]))
        if "oracle" in metrics:
            from codi_jax.eval import oracle

            for m in self.cell.outputs:
                rate = {"sample_rate": AUDIO_RATE} if m == "audio" else {}
                self.oracle[m] += [oracle.decode(m, g[m], **rate) for g in generated]
            self.attributes += [e["attributes"] for e in examples]

    def _embed(self, modality: str, values):
        embedder = self.nets.get("embedder")
        if modality == "text":
            return embedder.text(values)
        return {"image": embedder.images, "video": embedder.videos, "audio": embedder.audio}[modality](np.stack(values))

    def result(self, real: Mapping[str, dict]) -> dict:
        from codi_jax.eval import scoring
        from codi_jax.eval.metrics import captioning, scores

        out: dict = {}
        for metric, running in self.running.items():
            out[metric] = running.result().distance(real[metric]["stats"])
        splits = int(self.config.is_splits)
        if "is" in self.metrics:
            out["is"] = scores.inception_score(np.concatenate(self.logits["is"]), splits)["mean"]
        if "is_audio" in self.metrics:
            out["is_audio"] = scores.inception_score(np.concatenate(self.logits["is_audio"]), splits)["mean"]
        if "kl" in self.metrics:
            generated = np.concatenate(self.logits["is_audio"])
            kl = scores.kl_divergence(generated, real["kl"]["logits"][:len(generated)])
            out["kl"], out["kl_sigmoid"] = kl["softmax"], kl["sigmoid"]
        for name, (total, count) in self.sums.items():
            out[name] = total / count
        wanted = [m for m in self.metrics if m in CAPTION_METRICS]
        if wanted:
            out.update(captioning.caption_metrics(self.predictions, self.references, wanted))
        if "oracle" in self.metrics:
            for m in self.cell.outputs:
                out[f"oracle_{m}"] = scoring.conditional_accuracy(self.cell.inputs, m, self.attributes,
                                                                  self.oracle[m])["accuracy"]
        return out


def request_for(cell: Cell, example: dict, index: int, generation):
    from codi_jax import sampling

    fields = {m: example[m] for m in cell.inputs if m != "text"}
    if "text" in cell.inputs:
        if not example["text"]:
            raise UsageError(f"example {example['id']!r} has no caption for a text-conditioned cell")
        fields["text"] = example["text"]
    return sampling.Request(outputs=cell.outputs, sampler=generation.sampler, steps=int(generation.steps),
                            guidance=float(generation.guidance), seed=int(generation.seed) + index,
                            independent=cell.independent, **fields)


def evaluate_cell(cell: Cell, pipe, examples: Examples, nets: MetricNetworks, real: Mapping[str, dict], config,
                  progress: bool) -> dict:
    scores_ = CellScores(cell, config.metrics, nets, config)
    chunk = int(config.generation.chunk)
    started = time.perf_counter()
    for start in _progress(range(0, len(examples), chunk), cell.title, progress):
        batch = [examples.get(i, cell.inputs) for i in range(start, min(start + chunk, len(examples)))]
        requests = [request_for(cell, e, start + k, config.generation) for k, e in enumerate(batch)]
        generated = [normalise_outputs(o, examples) for o in pipe.generate_batch(requests, progress=False)]
        scores_.add(generated, batch)
    return {"cell": cell.title, "inputs": list(cell.inputs), "outputs": list(cell.outputs),
            "independent": cell.independent, "n": scores_.count, "seconds": time.perf_counter() - started,
            "metrics": scores_.result(real)}


# ----------------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m codi_jax.evaluate", description="The CoDi paper's metrics for a checkpoint.")
    p.add_argument("--config", required=True, help="configs/evaluate.py:<task>")
    p.add_argument("--checkpoint", help="a training workdir (its latest checkpoint) or one checkpoint folder")
    p.add_argument("--random-init", action="store_true", help="generate with randomly initialised networks")
    p.add_argument("--out", help="output folder (default eval/<task>)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, overrides: Sequence[str]) -> None:
    """--config.a.b=value (value a Python literal, else a string) on an existing key."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise UsageError(f"unrecognized argument {item!r}; overrides look like --config.key=value")
        path, _, text = item[len("--config."):].partition("=")
        try:
            node, leaf = config_files.parent_of(config, path)
        except KeyError as e:
            raise UsageError(f"--config.{path}: no such key {e.args[0]!r}") from None
        value = _parse_value(text)
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text
        if isinstance(node[leaf], tuple) and isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError as err:
            raise UsageError(f"--config.{path}: {err}") from None


def check_config(config) -> None:
    """Every metric known and fitting the task, every weights file there: before anything is computed."""
    from codi_jax.eval.metrics.torch_weights import WeightsError

    known = set(METRIC_OUTPUT) | {"coherence", "oracle"}
    unknown = [m for m in config.metrics if m not in known]
    if unknown:
        raise UsageError(f"metrics: unknown metric {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
    if "oracle" in config.metrics and config.data.dataset != "shapes_tones":
        raise UsageError("metrics: 'oracle' reads Shapes & Tones attributes; it needs data.dataset='shapes_tones'")
    if config.is_splits < 1 or config.generation.chunk < 1:
        raise UsageError("is_splits and generation.chunk must be positive")
    if config.random_metric_weights:
        return
    needed = {"inception": {"fid", "is"}, "panns": {"fd", "is_audio", "kl"}, "vggish": {"fad"}, "i3d": {"fvd"}}
    for name, metrics in needed.items():
        path = pathlib.Path(os.path.expanduser(config.weights[name]))
        if set(config.metrics) & metrics and not path.is_file():
            raise WeightsError(f"weights.{name}: expected the weights file {path}, which does not exist "
                               f"(README: 'Evaluation' says where it comes from)")


def load_config(spec: str, overrides: Sequence[str]):
    from codi_jax import sample

    try:
        config = sample.load_config(spec)
    except sample.UsageError as err:
        raise UsageError(str(err)) from None
    apply_overrides(config, overrides)
    return config


def run(config, checkpoint: str | None, random_init: bool, out: pathlib.Path, progress: bool) -> dict:
    from codi_jax import sample, sampling
    from codi_jax.parallel.mesh import make_mesh

    check_config(config)
    examples = Examples(config.data)
    if set(config.metrics) & {"is", "is_audio"} and len(examples) < config.is_splits:
        raise UsageError(f"the inception score splits the samples {config.is_splits} ways; {len(examples)} examples "
                         "are too few (lower is_splits or raise data.num_examples)")
    sample_config = sample.load_config(config.sample_config)
    if checkpoint:
        pipe = sampling.CoDiPipeline.from_checkpoint(checkpoint, sample_config)
    else:
        pipe = sampling.CoDiPipeline.from_config(sample_config, random_init=random_init)
    nets = MetricNetworks(config, make_mesh(dict(config.mesh)), pipe)
    chunk = int(config.generation.chunk)
    real = {}
    for metric in [m for m in config.metrics if m in DISTRIBUTIONS or m == "kl"]:
        real[metric] = real_statistics(metric, examples, nets, config.cache_dir, chunk, progress)
    started = time.perf_counter()
    cells = [evaluate_cell(cell, pipe, examples, nets, real, config, progress) for cell in CELLS[config.task]]
    report = {"task": config.task, "checkpoint": checkpoint or ("random" if random_init else "config"),
              "n": len(examples), "data": f"{config.data.dataset}:{config.data.path or ''}:{config.data.split}",
              "generation": dict(config.generation), "seconds": time.perf_counter() - started, "cells": cells}
    step = sampling.resolve_checkpoint(checkpoint)[1] if checkpoint else None
    metrics_report.write_reports(report, out, step or 0)
    return report


def main(argv=None) -> int:
    from codi_jax import media, sampling
    from codi_jax.data.records import CorruptRecordError
    from codi_jax.eval.metrics.captioning import MissingResourceError
    from codi_jax.eval.metrics.frechet import StatisticsError
    from codi_jax.eval.metrics.torch_weights import WeightsError

    try:
        args, overrides = build_parser().parse_known_args(argv)
        config = load_config(args.config, overrides)
        if args.checkpoint and args.random_init:
            raise UsageError("--checkpoint and --random-init exclude each other")
        if not args.checkpoint and not args.random_init:
            raise UsageError("give --checkpoint DIR (or --random-init for a smoke run)")
        out = pathlib.Path(args.out or f"eval/{config.task}")
        out.mkdir(parents=True, exist_ok=True)
        report = run(config, args.checkpoint, args.random_init, out, not args.no_progress)
    except (UsageError, sampling.RequestError, sampling.ConfigError, media.MediaError, WeightsError,
            CorruptRecordError, MissingResourceError, StatisticsError) as err:
        print(f"codi_jax.evaluate: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(metrics_report.render_markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
