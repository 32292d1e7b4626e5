"""grain input pipelines: one per objective, mixed by weight, sharded per host, checkpointable.

    it = make_dataset(default_config(("text_image", "audio_video")), global_batch_size=64, seed=0)
    batch = next(it)              # dict of numpy arrays, leading dim 64 // process_count
    state = it.get_state()        # save with orbax (grain's checkpoint handler) or as JSON
    it.set_state(state)           # resumes at exactly the next batch

Per objective (a set of modalities drawn from one dataset):
  record indices -> global shuffle (seeded, reshuffled every epoch) -> repeat -> this host's slice
  (every process_count-th index from process_index, so hosts are disjoint) -> load + preprocess
  (threads) -> batches of the per-host share of the global batch.
Objectives are then mixed batch by batch with the configured weights (grain's deterministic
proportional interleave), so one batch holds one objective's modalities.

Datasets: "shapes_tones" generates examples on the fly from (split, index) (no preparation; the CPU
default); "records" reads a directory in the shared schema (codi_jax.data.records) written by
`python -m data_pipelines.shapes_tones` or the real-data converters in data_pipelines/; "encoded" reads
cached encodings (codi_jax.data.encodings, written by `python -m codi_jax.precompute`): the objective's
modalities pick the latents and prompt encodings each example carries instead of its media.
The batch format is documented in codi_jax/data/__init__.py.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import grain
import ml_collections
import numpy as np

from codi_jax.data import encodings, preprocess, records, tokenizers
from codi_jax.data import shapes_tones as st
from codi_jax.models.catalogue import MODALITIES

DATASETS = ("shapes_tones", "records", "encoded")
DEFAULT_MAX_LENGTH = {"clip": tokenizers.CLIP_MAX_LENGTH, "bert": 32, "gpt2": 32}

_log = logging.getLogger(__name__)


def default_config(objectives: Sequence[str] = ("text_image",), *, weights: Sequence[float] | None = None,
                   resolution: int = st.DEFAULT_RESOLUTION, text_encoders: Sequence[str] = ("clip",),
                   split: str = "train") -> ml_collections.ConfigDict:
    """A data config of on-the-fly Shapes & Tones objectives named by their modalities ("text_image",
    "audio_video", "image", ...), with per-modality preprocessing at `resolution` and the small
    Shapes & Tones tokenizers (set preprocess.text.tokenizers.<name>.path for real ones)."""
    weights = [1.0] * len(objectives) if weights is None else list(weights)
    if len(weights) != len(objectives):
        raise ValueError(f"{len(weights)} weights for {len(objectives)} objectives; expected one each")
    config = ml_collections.ConfigDict()
    config.objectives = ml_collections.ConfigDict()
    for name, weight in zip(objectives, weights):
        config.objectives[name] = ml_collections.ConfigDict(dict(
            dataset="shapes_tones", path="", split=split, modalities=tuple(name.split("_")), weight=float(weight)))
    config.preprocess = ml_collections.ConfigDict(dict(
        image=dict(size=resolution),
        video=dict(size=resolution, num_frames=st.NUM_FRAMES),
        audio=dict(num_samples=st.NUM_SAMPLES, normalize=True),
        text=dict(truncate=True, tokenizers={
            kind: dict(kind=kind, path="", max_length=DEFAULT_MAX_LENGTH[kind]) for kind in text_encoders}),
    ))
    config.shapes_tones = ml_collections.ConfigDict(dict(
        resolution=resolution, examples=dict(train=1_000_000, validation=2048, test=2048)))
    # A cache directory of codi_jax.precompute: when set, every objective reads its cached encodings instead.
    config.encodings = ""
    config.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    config.shuffle = True
    config.read_threads = 2
    config.worker_count = 0
    config.skip_corrupt = False
    return config


class ShapesTonesSource:
    """Random-access Shapes & Tones split, generated on demand: source[i] -> raw example."""

    def __init__(self, split: str, size: int, resolution: int, modalities: Sequence[str]):
        if split not in st.SPLITS:
            raise ValueError(f"unknown Shapes & Tones split {split!r}; expected one of {st.SPLITS}")
        self.split, self.size = split, int(size)
        self.resolution = st.check_resolution(resolution)
        self.modalities = tuple(modalities)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        example = st.generate(self.split, int(index), self.resolution, self.modalities)
        raw = {"attributes": st.attribute_indices(example["attributes"])}
        raw.update({m: example[m] for m in self.modalities})
        if "audio" in raw:
            raw["audio_sample_rate"] = st.SAMPLE_RATE
        return raw


class RecordExamples:
    """A records directory's split as raw examples: source[i] -> decoded media of `modalities`."""

    def __init__(self, path: str, split: str, modalities: Sequence[str]):
        self.records = records.RecordSource(path, split)
        self.modalities = tuple(modalities)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return records.decode_record(self.records[index], self.modalities)


class LoadExample:
    """Record index -> one preprocessed example (dict of numpy arrays), or None to skip a corrupt one."""

    def __init__(self, source, modalities: Sequence[str], preprocessing: Mapping, text_tokenizers: Mapping,
                 skip_corrupt: bool):
        self.source, self.modalities = source, tuple(modalities)
        self.preprocessing, self.tokenizers, self.skip_corrupt = preprocessing, dict(text_tokenizers), skip_corrupt

    def __call__(self, index: int) -> dict | None:
        try:
            raw = self.source[index]
            return self._process(raw, int(index))
        except (records.CorruptRecordError, ValueError) as error:
            if not self.skip_corrupt:
                raise
            _log.warning("skipping example %d of %r: %s", index, self.source, error)
            return None

    def _process(self, raw: dict, index: int) -> dict:
        p = self.preprocessing
        out = {"index": np.int32(index)}
        if "image" in self.modalities:
            out["image"] = preprocess.preprocess_image(raw["image"], p["image"]["size"])
        if "video" in self.modalities:
            out["video"] = preprocess.preprocess_video(raw["video"], p["video"]["num_frames"], p["video"]["size"])
        if "audio" in self.modalities:
            out["audio"] = preprocess.preprocess_audio(raw["audio"], raw["audio_sample_rate"],
                                                       p["audio"]["num_samples"], p["audio"]["normalize"])
        if "text" in self.modalities:
            for name, tokenizer in self.tokenizers.items():
                spec = p["text"]["tokenizers"][name]
                out[f"text_ids/{name}"] = tokenizer.encode(raw["text"], spec["max_length"], p["text"]["truncate"])[0]
        for name in st.ATTRIBUTES:
            out[name] = np.int32(raw["attributes"][name])
        return out


class LoadEncoded:
    """Cache index -> the cached fields of `modalities` (latent/<m>, latent_std/<m>, embedding/<m>), the
    example's split index and attributes."""

    def __init__(self, source: encodings.EncodingSource, modalities: Sequence[str]):
        self.source = source
        fields = [k for k in source.features.keys() if "/" in k]
        self.fields = [k for k in fields if k.split("/", 1)[1] in modalities]
        missing = sorted(set(modalities) - {k.split("/", 1)[1] for k in self.fields})
        if missing:
            raise ValueError(f"{source!r} holds no encodings of {missing}; it has {sorted(fields)}")

    def __call__(self, index: int) -> dict:
        raw = self.source[int(index)]
        out = {k: raw[k] for k in self.fields}
        out.update({k: np.int32(raw[k]) for k in encodings.INT_FIELDS})
        return out


def reads_encodings(data_config) -> bool:
    """Whether every objective of the data config reads cached encodings (no media, no token ids)."""
    return bool(data_config.get("encodings")) or all(o.dataset == "encoded" for o in data_config.objectives.values())


def _merged_preprocessing(config, objective) -> dict:
    merged = config.preprocess.to_dict()
    for modality, overrides in (objective.get("preprocess") or {}).items():
        merged.setdefault(modality, {}).update(dict(overrides))
    return merged


def _check_objective(name: str, objective) -> tuple[str, ...]:
    modalities = tuple(objective.modalities)
    unknown = set(modalities) - set(MODALITIES)
    if not modalities or unknown:
        raise ValueError(f"objective {name!r}: modalities {modalities} must be a non-empty subset of {MODALITIES}")
    if objective.dataset not in DATASETS:
        raise ValueError(f"objective {name!r}: unknown dataset {objective.dataset!r}; expected one of {DATASETS}")
    if objective.dataset in ("records", "encoded") and not objective.get("path"):
        raise ValueError(f"objective {name!r}: dataset {objective.dataset!r} needs `path` (a prepared dataset or "
                         "encodings directory)")
    if objective.weight <= 0:
        raise ValueError(f"objective {name!r}: weight must be positive, got {objective.weight}")
    return modalities


def example_loader(name: str, objective, config, text_tokenizers: Mapping, process_count: int = 1):
    """(source, load) of one objective: `load(i)` is example i of the source, preprocessed (a dict of numpy
    arrays), or None for a corrupt one that `skip_corrupt` drops."""
    if config.get("encodings"):
        objective = ml_collections.ConfigDict(dict(objective.to_dict(), dataset="encoded", path=config.encodings))
    modalities = _check_objective(name, objective)
    if objective.dataset == "shapes_tones":
        examples = config.shapes_tones.examples
        if objective.split not in examples:
            raise ValueError(f"objective {name!r}: no example count for split {objective.split!r} in "
                             f"shapes_tones.examples; expected one of {tuple(examples)}")
        source = ShapesTonesSource(objective.split, examples[objective.split], config.shapes_tones.resolution,
                                   modalities)
    elif objective.dataset == "encoded":
        source = encodings.EncodingSource(objective.path, objective.split)
    else:
        source = RecordExamples(objective.path, objective.split, modalities)
    if len(source) < process_count:
        raise ValueError(f"objective {name!r}: {len(source)} examples cannot be shared by {process_count} hosts")
    if objective.dataset == "encoded":
        return source, LoadEncoded(source, modalities)
    used = dict(text_tokenizers) if "text" in modalities else {}
    return source, LoadExample(source, modalities, _merged_preprocessing(config, objective), used,
                               config.skip_corrupt)


def _objective_dataset(name: str, objective, config, text_tokenizers: Mapping, *, per_host_batch: int,
                       process_index: int, process_count: int, seed: int) -> grain.IterDataset:
    source, load = example_loader(name, objective, config, text_tokenizers, process_count)
    dataset = grain.MapDataset.range(len(source))
    if config.shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(config.num_epochs)
    dataset = dataset[process_index::process_count]
    dataset = dataset.map(load)
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                        prefetch_buffer_size=2 * per_host_batch))
    return dataset.batch(per_host_batch, drop_remainder=True)


def batch_shapes(data_config: ml_collections.ConfigDict, name: str, global_batch_size: int) -> dict:
    """{key: (shape, dtype)} of the global batches objective `name` yields (the format of
    codi_jax/data/__init__.py), from the config alone: nothing is read, so a step can be compiled for
    data that is not on this machine. Cached encodings take their shapes from the cache, so they are refused."""
    objective = data_config.objectives[name]
    modalities = _check_objective(name, objective)
    if objective.dataset == "encoded" or data_config.get("encodings"):
        raise ValueError(f"objective {name!r} reads cached encodings, whose shapes only the cache knows")
    p, b = _merged_preprocessing(data_config, objective), int(global_batch_size)
    shapes = {"index": ((b,), np.int32), **{attr: ((b,), np.int32) for attr in st.ATTRIBUTES}}
    if "image" in modalities:
        shapes["image"] = ((b, p["image"]["size"], p["image"]["size"], 3), np.float32)
    if "video" in modalities:
        v = p["video"]
        shapes["video"] = ((b, v["num_frames"], v["size"], v["size"], 3), np.float32)
    if "audio" in modalities:
        shapes["audio"] = ((b, p["audio"]["num_samples"]), np.float32)
    if "text" in modalities:
        for tokenizer, spec in p["text"]["tokenizers"].items():
            shapes[f"text_ids/{tokenizer}"] = ((b, spec["max_length"]), np.int32)
    return shapes


def make_dataset(data_config: ml_collections.ConfigDict, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, seed: int = 0) -> grain.DatasetIterator:
    """An iterator of per-host batches for the objectives of `data_config`, with get_state / set_state.

    Every host must pass the same config, global batch size and seed (the shuffle is global; each host
    keeps its own slice of it).
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"process_count {process_count}")
    if not data_config.objectives:
        raise ValueError("data config names no objectives; expected at least one under `objectives`")
    text_tokenizers = {name: tokenizers.build_tokenizer(spec.kind, spec.path)
                       for name, spec in data_config.preprocess.text.tokenizers.items()}
    branches, weights = {}, {}
    for k, (name, objective) in enumerate(sorted(data_config.objectives.items())):
        branch_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        branches[name] = _objective_dataset(name, objective, data_config, text_tokenizers,
                                            per_host_batch=global_batch_size // process_count,
                                            process_index=process_index, process_count=process_count,
                                            seed=branch_seed)
        weights[name] = float(objective.weight)
    dataset = next(iter(branches.values())) if len(branches) == 1 else grain.IterDataset.mix(branches, weights)
    if data_config.worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; a program without absl.app has not parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
    return iter(dataset)


def probe_batch(data_config: ml_collections.ConfigDict, modalities: Sequence[str], num_examples: int,
                split: str = "validation") -> dict:
    """The first `num_examples` of `split` (in order, unshuffled) with `modalities`, as one batch: the fixed
    examples a stage probe scores. Read from the dataset of the config's first objective (on-the-fly Shapes &
    Tones, prepared records or cached encodings) with the config's preprocessing."""
    config = ml_collections.ConfigDict(data_config.to_dict())
    first = config.objectives[sorted(config.objectives)[0]]
    config.objectives = ml_collections.ConfigDict({"probe": dict(
        dataset=first.dataset, path=first.get("path", ""), split=split, modalities=tuple(modalities), weight=1.0)})
    config.encodings = data_config.get("encodings", "")
    config.shuffle, config.num_epochs, config.worker_count = False, 1, 0
    return next(make_dataset(config, global_batch_size=num_examples))

