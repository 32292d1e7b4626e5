"""Any-to-any generation with CoDi: requests, conditioning, the compiled sampling call, decoding, files.

A `Request` names its inputs (any subset of text / image / video / audio, each with a mixing weight),
its outputs (any non-empty subset of the same four) and the sampler settings. `CoDiPipeline` turns it
into outputs:

1. every input goes through its aligned prompt encoder (CLIP text / image / video, CLAP audio) to one
   L2-normalised token [1, 1, D]; the unconditional token of each input modality is the original's
   (CLIP of "", CLIP of a mid-gray image or video, CLAP of silence); both sets are mixed with the
   request's weights, w_i / sum(w), without re-normalising the result (`codi.mix_conditions`). Images
   and video frames go through CLIP's processor (shortest side, centre crop) without the original demo's
   random crop and flip, so a seed fixes the whole generation;
2. one compiled call runs the whole denoising loop (`diffusion.samplers.sample` under one jit) with
   classifier-free guidance batched (`diffusion.guidance.cfg_denoiser`), all outputs stepped together
   with one shared timestep: two or more outputs go through the environment encoders and the joint
   cross-attention, one output through the plain LDM (the CoDi model decides from the latents it gets);
   `independent=True` samples each output alone from the same condition and the same initial noise;
3. the latents are decoded: image / video by the image VAE to [0, 1] (frames folded), audio by the mel
   VAE and HiFi-GAN to 16 kHz, text by Optimus's GPT-2 and the GPT-2 tokenizer.

Batches: requests sharing (outputs, sampler, steps, independent) run together in chunks of
`config.batch_size`; a short chunk is padded with copies of its last request, so every signature
compiles exactly once and a request's result does not depend on its neighbours (`generate(r)` is the
one-request batch). Randomness is per request: the seed gives the initial noise of each output
modality (the same for a modality whatever else is generated), the text decoder's draws and CLAP's
crop of long audio.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from codi_jax import media
from codi_jax.data.preprocess import sample_frame_indices, scale_to_unit_range
from codi_jax.data.tokenizers import build_tokenizer
from codi_jax.diffusion import samplers
from codi_jax.diffusion.guidance import cfg_denoiser
from codi_jax.diffusion.schedule import NUM_TIMESTEPS, PREDICTIONS, eps_from_prediction, make_schedule
from codi_jax.models import catalogue, clap, clip_preprocess, codi, optimus
from codi_jax.models.catalogue import MODALITIES, NAMES as COMPONENTS, UNETS
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages import components

SAMPLERS = samplers.METHODS
REQUEST_FIELDS = ("id", "text", "image", "video", "audio", "weights", "outputs", "sampler", "steps", "guidance",
                  "seed", "independent")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class RequestError(ValueError):
    """A request that cannot be run, with a one-line reason."""


def _modality_list(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"{what}: expected a list of modalities, got {value!r}")
    if not value:
        raise RequestError(f"{what}: the list is empty; expected a non-empty subset of {', '.join(MODALITIES)}")
    unknown = [v for v in value if v not in MODALITIES]
    if unknown:
        raise RequestError(f"{what}: unknown modality {unknown[0]!r}; expected a subset of {', '.join(MODALITIES)}")
    if len(set(value)) != len(value):
        raise RequestError(f"{what}: {list(value)} names a modality twice")
    return tuple(value)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{what}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{what}: expected a finite number, got {value!r}")
    return number


def _assignments(value, what: str) -> dict[str, float]:
    """{"text": 0.5} or "text=0.5,image=0.5" -> {modality: float}."""
    if isinstance(value, str):
        pairs = {}
        for item in (v.strip() for v in value.split(",") if v.strip()):
            key, sep, number = item.partition("=")
            if not sep:
                raise RequestError(f"{what}: {item!r} is not of the form modality=number")
            if key.strip() in pairs:
                raise RequestError(f"{what}: {key.strip()!r} is given twice")
            pairs[key.strip()] = number
        value = pairs
    if not isinstance(value, Mapping) or not value:
        raise RequestError(f"{what}: expected modality=number pairs, got {value!r}")
    out = {}
    for key, number in value.items():
        if key not in MODALITIES:
            raise RequestError(f"{what}: unknown modality {key!r}; expected one of {', '.join(MODALITIES)}")
        out[key] = _number(number, f"{what} {key}")
    return out


def _integer(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise RequestError(f"{what}: expected an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise RequestError(f"{what}: {value} is out of range; expected {low} to {high}")
    return value


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation. Media inputs are file paths or arrays in our layouts: image uint8 [H, W, 3],
    video uint8 [F, H, W, 3], audio float32 [N] at 16 kHz. `weights` default to 1 for every input;
    `guidance` is one scale for every output or {output: scale} (outputs not named take the default)."""
    outputs: tuple[str, ...]
    text: str | None = None
    image: Any = None
    video: Any = None
    audio: Any = None
    weights: Mapping[str, float] | None = None
    sampler: str = "ddim"
    steps: int = 50
    guidance: float | Mapping[str, float] = 7.5
    seed: int = 0
    independent: bool = False
    id: str | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("outputs", _modality_list(self.outputs, "outputs"))
        if self.text is not None:
            if not isinstance(self.text, str) or not self.text.strip():
                raise RequestError(f"text: expected a non-empty caption, got {self.text!r}")
        if self.weights is not None:
            weights = _assignments(self.weights, "weights")
            if set(weights) != set(self.input_modalities):
                raise RequestError(f"weights: given for {sorted(weights)} but the inputs are "
                                   f"{sorted(self.input_modalities) or 'none'}; give one weight per input")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise RequestError(f"weights: {weights} must be non-negative with a positive sum")
            set_("weights", weights)
        if self.sampler not in SAMPLERS:
            raise RequestError(f"sampler: unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        set_("steps", _integer(self.steps, "steps", 1, NUM_TIMESTEPS))
        try:
            if self.sampler == "ddim":
                samplers.ddim_timesteps(NUM_TIMESTEPS, self.steps)
            else:
                samplers.dpm_timesteps(NUM_TIMESTEPS, self.steps)
        except ValueError as err:
            raise RequestError(f"steps: {err}") from None
        set_("seed", _integer(self.seed, "seed", 0, 2 ** 32 - 1))
        if isinstance(self.guidance, (Mapping, str)) and not _is_number_string(self.guidance):
            scales = _assignments(self.guidance, "guidance")
            extra = sorted(set(scales) - set(self.outputs))
            if extra:
                raise RequestError(f"guidance: given for {extra}, which {'is' if len(extra) == 1 else 'are'} not "
                                   f"among the outputs {list(self.outputs)}")
            set_("guidance", scales)
        else:
            set_("guidance", _number(self.guidance, "guidance"))
        if not isinstance(self.independent, bool):
            raise RequestError(f"independent: expected true or false, got {self.independent!r}")
        if self.id is not None and not (isinstance(self.id, str) and _ID_PATTERN.fullmatch(self.id)):
            raise RequestError(f"id: {self.id!r} is not usable as a folder name; use letters, digits, '.', '_', '+', '-'")

    @property
    def input_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    def mix_weights(self) -> dict[str, float]:
        return dict(self.weights) if self.weights is not None else {m: 1.0 for m in self.input_modalities}

    def scales(self, default: float) -> dict[str, float]:
        """The guidance scale of every output."""
        if isinstance(self.guidance, Mapping):
            return {m: float(self.guidance.get(m, default)) for m in self.outputs}
        return {m: float(self.guidance) for m in self.outputs}

    @property
    def signature(self) -> tuple:
        """What fixes the compiled program: requests with equal signatures share one batch."""
        return self.outputs, self.sampler, self.steps, self.independent

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> "Request":
        """A request from JSON-like fields (a --batch line, or the CLI's flags); `defaults` fill the
        sampler settings a request leaves out (sampler, steps, guidance, seed)."""
        if not isinstance(fields, Mapping):
            raise RequestError(f"expected a JSON object of request fields, got {type(fields).__name__}")
        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise RequestError(f"unknown request field {unknown[0]!r}; expected some of {', '.join(REQUEST_FIELDS)}")
        if fields.get("outputs") is None:
            raise RequestError(f"outputs: missing; expected a non-empty subset of {', '.join(MODALITIES)}")
        merged = {k: v for k, v in dict(defaults or {}).items() if k in ("sampler", "steps", "guidance", "seed")}
        merged.update({k: v for k, v in fields.items() if v is not None})
        for name in ("image", "video", "audio"):
            if name in merged and not isinstance(merged[name], (str, os.PathLike, np.ndarray)):
                raise RequestError(f"{name}: expected a file path, got {merged[name]!r}")
        return cls(**merged)

    def to_json(self) -> dict:
        """The request in its --batch line form (so request.json replays it): file inputs as given, array
        inputs by shape, and the weights and guidance actually used."""
        def media_field(value):
            if isinstance(value, np.ndarray):
                return f"<array {value.dtype} {list(value.shape)}>"
            return os.fspath(value) if isinstance(value, os.PathLike) else value

        out = {"id": self.id, **{m: media_field(getattr(self, m)) for m in self.input_modalities},
               "weights": self.mix_weights(), "outputs": list(self.outputs), "sampler": self.sampler,
               "steps": self.steps, "guidance": self.guidance if isinstance(self.guidance, float)
               else dict(self.guidance), "seed": self.seed, "independent": self.independent}
        return {k: v for k, v in out.items() if v is not None}


def _is_number_string(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_batch_file(path) -> list[dict]:
    """A JSONL file of requests: one JSON object per non-empty line, each with a unique `id`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise RequestError(f"batch file {path}: no such file")
    records, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RequestError(f"batch file {path} line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise RequestError(f"batch file {path} line {number}: expected a JSON object")
        if not record.get("id"):
            raise RequestError(f"batch file {path} line {number}: missing 'id' (names the output folder)")
        if record["id"] in seen:
            raise RequestError(f"batch file {path} line {number}: id {record['id']!r} is used twice")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise RequestError(f"batch file {path}: holds no requests")
    return records


def load_inputs(request: Request) -> Request:
    """The request with its media files read into arrays (MediaError names a bad file), array inputs checked."""
    loaded = {}
    for modality in ("image", "video", "audio"):
        value = getattr(request, modality)
        if value is None:
            continue
        array = media.read_input(modality, value) if isinstance(value, (str, os.PathLike)) else np.asarray(value)
        loaded[modality] = _check_array(modality, array)
    return dataclasses.replace(request, **loaded)


def _check_array(modality: str, array: np.ndarray) -> np.ndarray:
    rank, layout = {"image": (3, "uint8 [H, W, 3]"), "video": (4, "uint8 [F, H, W, 3]"),
                    "audio": (1, "float [N] at 16 kHz")}[modality]
    bad_type = array.dtype != np.uint8 if modality != "audio" else not np.issubdtype(array.dtype, np.floating)
    if array.ndim != rank or bad_type or (modality != "audio" and array.shape[-1] != 3) or array.size == 0:
        raise RequestError(f"{modality}: expected {layout}, got {array.dtype} {list(array.shape)}")
    return array.astype(np.float32) if modality == "audio" else array


# ----------------------------------------------------------------------------------------------------
# Networks and their weights

# Written by codi_jax.convert.released into every workdir it converts: weights as released, which the
# sampler runs with the released code's wiring (see `wiring` in configs/sample.py).
RELEASED_MARKER = "released.json"
# Mel -> wave for generated audio: the trained HiFi-GAN ("vocoder", the original's path) or mel inversion +
# Griffin-Lim ("griffin_lim", no learned weights: for runs too short to train a vocoder, e.g. on a CPU).
MEL_INVERSIONS = ("vocoder", "griffin_lim")
GRIFFIN_LIM_ITERATIONS = 8
# Independent random streams drawn from one request's seed: the initial noise of each output modality
# (so a modality starts from the same noise whatever else is generated), the text decoder's draws,
# and CLAP's crop of audio longer than its clip.
_STREAMS = {"text": 0, "image": 1, "video": 2, "audio": 3, "text_decoding": 4, "audio_crop": 5}


class CheckpointError(ConfigError):
    """A weights source (workdir, checkpoint folder, released file) that cannot be read or does not fit."""


def enable_compilation_cache(path) -> str | None:
    """Turn on JAX's persistent compilation cache in `path` ('' or 'none': leave JAX's setting,
    off unless JAX_COMPILATION_CACHE_DIR is set)."""
    if not path or str(path).lower() == "none":
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    jax.config.update("jax_compilation_cache_dir", path)
    return path


@dataclasses.dataclass(frozen=True)
class Networks:
    """Every network of a sampling config, unbound, by component name; `codi` holds the three UNets."""
    modules: Mapping[str, Any]
    codi: Any

    def __getattr__(self, name):
        modules = self.__dict__.get("modules", {})
        if name in modules:
            return modules[name]
        raise AttributeError(name)


def build_networks(config) -> Networks:
    """The networks `config.models` describes ({variant, overrides} per component, the training configs'
    form), in the config's compute dtype."""
    dtype = jnp.dtype(config.compute_dtype)
    modules = {name: components.build(name, config.models[name], dtype=dtype, remat_policy="none",
                                      attn_impl=config.attn_impl) for name in COMPONENTS}
    return Networks(modules=modules, codi=codi.build({name: modules[name] for name in UNETS}))


@functools.lru_cache(maxsize=64)
def _abstract(name: str, module) -> dict:
    init = lambda rng: components.init_variables(name, module, rng)  # noqa: E731
    return nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))


def abstract_variables(nets: Networks) -> dict:
    """{component: flax variables as ShapeDtypeStructs}, nothing allocated (traced once per network
    configuration in a process)."""
    return {name: _abstract(name, nets.modules[name]) for name in COMPONENTS}


_ZERO_LEAVES = ("bias", "beta", "mean")
_ONE_LEAVES = ("scale", "g", "gamma", "var")


def random_variables(abstract, rng: np.random.Generator) -> dict:
    """Random weights for the shapes of `abstract`, drawn on the host.

    For smoke runs and timing only, so they cost no compile: the modules' own initialisers run inside
    `init`, whose XLA compile takes minutes on a CPU for the CoDi UNets. Kernels and tables are
    N(0, 1 / fan_in) with fan_in the product of all but the last dim, so activations keep their scale;
    biases and means are 0, norm scales and variances 1, other vectors N(0, 0.02^2).
    """
    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(abstract)).items():
        shape, name = tuple(leaf.shape), path[-1]
        if name in _ZERO_LEAVES or not shape:
            value = np.zeros(shape, np.float32)
        elif name in _ONE_LEAVES:
            value = np.ones(shape, np.float32)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(np.prod(shape[:-1])))
        else:
            value = rng.standard_normal(shape, np.float32) * np.float32(0.02)
        flat[path] = value.astype(leaf.dtype)
    return traverse_util.unflatten_dict(flat)


def _flat_shapes(tree) -> dict[str, tuple]:
    return {"/".join(k): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _check_fits(name: str, source: str, loaded, abstract) -> None:
    got, want = _flat_shapes(loaded), _flat_shapes(abstract)
    for path, shape in want.items():
        if path not in got:
            raise CheckpointError(f"{name} from {source}: parameter {path} is missing")
        if got[path] != shape:
            raise CheckpointError(f"{name} from {source}: parameter {path} has shape {list(got[path])}, the "
                                  f"configured model expects {list(shape)} (do config.models match the weights?)")
    extra = sorted(set(got) - set(want))
    if extra:
        raise CheckpointError(f"{name} from {source}: parameter {extra[0]} does not exist in the configured model")


def resolve_checkpoint(path) -> tuple[str, int | None]:
    """(workdir, step) of a training workdir (its latest step), its `checkpoints` folder, or one step's folder."""
    p = pathlib.Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p}: no such directory")
    if (p / "checkpoints").is_dir():
        return str(p), None
    if p.name == "checkpoints":
        return str(p.parent), None
    if p.parent.name == "checkpoints" and p.name.isdigit():
        return str(p.parent.parent), int(p.name)
    raise CheckpointError(f"checkpoint {p}: neither a training workdir (with checkpoints/) nor a checkpoint "
                          "folder (checkpoints/<step>)")


def held_components(path) -> list[str]:
    """The components (COMPONENTS' names) whose weights a training workdir's latest checkpoint holds (from its
    metadata: no array is read)."""
    from codi_jax.train.handoff import saved_networks

    try:
        tops = saved_networks(resolve_checkpoint(path)[0])
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    return [name for name in COMPONENTS if name in tops]


class _WeightStore:
    """Reads each workdir checkpoint and released file once, however many components come from it."""

    def __init__(self):
        self._checkpoints: dict[str, dict] = {}
        self._state_dicts: dict[str, dict] = {}

    def checkpoint(self, path) -> dict[str, np.ndarray]:
        """{param path: array} of a workdir's latest checkpoint (EMA weights where the run kept them)."""
        from codi_jax.train.handoff import restore_params

        workdir, step = resolve_checkpoint(path)
        # Absolute: restore_params caches by its argument, and a relative path names another folder after a chdir.
        workdir = os.path.abspath(workdir)
        if workdir not in self._checkpoints:
            try:
                self._checkpoints[workdir] = restore_params(workdir, True)
            except (ValueError, FileNotFoundError) as err:
                raise CheckpointError(f"checkpoint {path}: {err}") from None
        latest, flat = self._checkpoints[workdir]
        if step is not None and step != latest:
            raise CheckpointError(f"checkpoint {path}: only the latest step ({latest}) of {workdir} can be loaded")
        return flat

    def state_dict(self, path) -> dict[str, np.ndarray]:
        p = pathlib.Path(path)
        if str(p) not in self._state_dicts:
            if not p.is_file():
                raise CheckpointError(f"released weights {p}: no such file")
            try:
                if p.suffix == ".safetensors":
                    from safetensors.numpy import load_file

                    sd = load_file(str(p))
                else:
                    import torch

                    sd = torch.load(str(p), map_location="cpu", weights_only=True)
                    sd = sd.get("state_dict", sd)
                    sd = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
            except Exception as err:  # torch / safetensors raise many types for unreadable files
                raise CheckpointError(f"released weights {p}: cannot read ({type(err).__name__}: {err})") from None
            self._state_dicts[str(p)] = sd
        return self._state_dicts[str(p)]


def _from_workdir(store: _WeightStore, name: str, where: str) -> dict:
    """`DIR` or `DIR#path`: the variables under `path` of the run's tree (default: the component's training
    name, under which a stage keeps `params` and any other collection)."""
    path, _, subtree = where.partition("#")
    flat = store.checkpoint(path)
    head = (subtree or name).rstrip("/") + "/"
    branch = {k[len(head):]: v for k, v in flat.items() if k.startswith(head)}
    if not branch:
        tops = sorted({k.split("/", 1)[0] for k in flat})
        raise CheckpointError(f"{name}: checkpoint {path} holds nothing under {head!r}; it has {tops}")
    return traverse_util.unflatten_dict(branch, sep="/")


def _from_released(store: _WeightStore, name: str, path: str) -> dict:
    from codi_jax.convert import registry

    component = registry.get(catalogue.NETWORKS[name].converter)
    sd = store.state_dict(path)
    if any(k.startswith(component.manifest_prefix) for k in sd):
        sd = registry.strip_prefix(sd, component.manifest_prefix)
    try:
        if name == "clap":
            # bn0's running statistics are a second collection, which the registry's convert leaves out.
            from codi_jax.convert.clap import convert_variables

            return convert_variables(sd)
        return {"params": component.convert(sd)}
    except KeyError as err:
        raise CheckpointError(f"{name} from released weights {path}: {err.args[0]}") from None


def load_variables(config, nets: Networks) -> tuple[dict, dict]:
    """({component: variables}, {component: source}) for every component, as `config.components` says."""
    abstract = abstract_variables(nets)
    store, variables, sources = _WeightStore(), {}, {}
    for index, name in enumerate(COMPONENTS):
        source = sources[name] = str(config.components[name])
        kind, _, where = source.partition(":")
        if kind == "random":
            loaded = random_variables(abstract[name], np.random.default_rng((int(config.init_seed), index)))
        elif kind == "workdir" and where:
            loaded = _from_workdir(store, name, where)
        elif kind == "released" and where:
            loaded = _from_released(store, name, where)
        else:
            raise ConfigError(f"components.{name}: {source!r} is not 'random', 'workdir:<DIR>' or "
                              "'released:<file>'")
        for collection, tree in abstract[name].items():
            if collection not in loaded:
                raise CheckpointError(f"{name} from {source}: no {collection!r} collection")
            _check_fits(name, source, loaded[collection], tree)
        # In the configured parameter dtype, whatever the source stored (a workdir converted from the fp16
        # files keeps float16), so every source of the same weights samples identically.
        variables[name] = {collection: jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), loaded[collection], tree)
                           for collection, tree in abstract[name].items()}
    return variables, sources


def latent_shapes(config) -> dict[str, tuple[int, ...]]:
    return {m: tuple(int(d) for d in config.latents[m]) for m in MODALITIES}


def output_shapes(config, nets: Networks, variables: Mapping[str, Any]) -> dict[str, tuple]:
    """Decoded output shapes per modality (image [H,W,3], video [F,H,W,3], audio [samples]) after checking
    `config.latents` and `config.audio_seconds` against the networks; `variables` may be abstract."""
    shapes = latent_shapes(config)
    unets = {"image": nets.unet_image, "video": nets.unet_image, "audio": nets.unet_audio, "text": nets.unet_text}
    for modality, unet in unets.items():
        if shapes[modality][-1] != unet.in_channels:
            raise ConfigError(f"latents.{modality} {list(shapes[modality])} has {shapes[modality][-1]} "
                              f"channels; its UNet takes {unet.in_channels}")
    contexts = {"clip": nets.clip.projection_dim, "clap": nets.clap.joint_embed_dim,
                **{name: nets.modules[name].context_dim for name in UNETS}}
    if len(set(contexts.values())) != 1:
        raise ConfigError(f"prompt encoders and UNets disagree on the context width: {contexts}")
    if shapes["text"] != (nets.optimus.decoder.latent_size,):
        raise ConfigError(f"latents.text {list(shapes['text'])} does not match Optimus' latent size "
                          f"{nets.optimus.decoder.latent_size}")

    def decoded(model, model_variables, latent):
        z = jax.ShapeDtypeStruct((1,) + latent, jnp.float32)
        return tuple(jax.eval_shape(lambda v, x: model.apply(v, x, method="from_latent"), model_variables, z).shape[1:])

    mel = decoded(nets.audio_vae, variables["audio_vae"], shapes["audio"])
    if mel[1:] != (nets.vocoder.num_mels, 1):
        raise ConfigError(f"latents.audio {list(shapes['audio'])} decodes to a mel {list(mel)}; the vocoder "
                          f"takes [T, {nets.vocoder.num_mels}, 1]")
    samples = mel[0] * int(np.prod(nets.vocoder.upsample_rates))
    if round(float(config.audio_seconds) * media.AUDIO_RATE) != samples:
        raise ConfigError(f"audio_seconds is {config.audio_seconds} but latents.audio decodes to "
                          f"{mel[0]} mel frames = {samples / media.AUDIO_RATE} s")
    return {"image": decoded(nets.image_vae, variables["image_vae"], shapes["image"]),
            "video": decoded(nets.image_vae, variables["image_vae"], shapes["video"]),
            "audio": (samples,), "text": ()}


def _check_tokenizers(tokenizers: Mapping[str, Any], nets: Networks) -> None:
    if tokenizers["gpt2"].vocab_size != nets.optimus.decoder.vocab_size:
        raise ConfigError(f"the gpt2 tokenizer has {tokenizers['gpt2'].vocab_size} tokens, Optimus' decoder "
                          f"{nets.optimus.decoder.vocab_size}")
    if tokenizers["clip"].vocab_size > nets.clip.vocab_size:
        raise ConfigError(f"the clip tokenizer has {tokenizers['clip'].vocab_size} tokens, more than CLIP's "
                          f"{nets.clip.vocab_size}")


# ----------------------------------------------------------------------------------------------------
# The compiled calls. Module level, with the networks as static arguments (flax modules hash and compare
# by their configuration), so pipelines built from the same config in one process share every compiled
# program: one compile per shape, however many times the CLI runs in-process.


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply(variables, *args, model, method: str):
    return model.apply(variables, *args, method=method)


@functools.partial(jax.jit, static_argnames=("model",))
def _encode_audio(variables, wave, rng, *, model):
    return model.apply(variables, wave, rng=rng, method="encode_audio")


@functools.partial(jax.jit, static_argnames=("model", "wiring", "aliased_skip", "method", "steps", "predictions"))
def _sample(codi_variables, x_T, cond, uncond, scales, *, model, wiring: str, aliased_skip: bool, method: str,
            steps: int, predictions: tuple):
    """The whole denoising loop: classifier-free guidance over the joint CoDi forward, one shared t;
    `predictions` ((modality, "eps" | "v"), ...) says what each output's UNet predicts."""
    schedule = make_schedule()

    def model_fn(latents, t, context):
        out = model.apply(codi_variables, latents, t, context, wiring=wiring, aliased_skip=aliased_skip)
        return eps_from_prediction(schedule, latents, t, out, dict(predictions))

    denoise = cfg_denoiser(model_fn, cond, uncond, scales)
    return samplers.sample(denoise, x_T, schedule=schedule, method=method, steps=steps)


@functools.partial(jax.jit, static_argnames=("model",))
def _decode_pixels(variables, z, *, model):
    """Latents -> uint8 pixels: the VAE's [-1, 1] output mapped to [0, 1] and clamped, as the original."""
    x = model.apply(variables, z, method="from_latent")
    return jnp.round(jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("vae",))
def _decode_mel(vae_variables, z, *, vae):
    """Latents -> log-mel [B, T, 64], one example at a time (the latent clipping looks at a batch's max |z|)."""
    return jax.vmap(lambda zi: vae.apply(vae_variables, zi[None], method="from_latent")[0, ..., 0])(z)


@functools.partial(jax.jit, static_argnames=("vae", "vocoder", "samples"))
def _decode_audio(vae_variables, vocoder_variables, z, *, vae, vocoder, samples: int):
    """Latents -> mel -> 16 kHz waves [B, samples] (the vocoder's tail beyond the mel frames dropped)."""
    mels = _decode_mel(vae_variables, z, vae=vae)
    return jax.vmap(lambda m: vocoder.apply(vocoder_variables, m[None])[0, :samples])(mels)


@functools.partial(jax.jit, static_argnames=("model", "max_length", "greedy"))
def _decode_text(variables, z, keys, *, model, max_length: int, greedy: bool):
    """Latents -> GPT-2 token ids [B, L] and lengths [B]; each row draws from its own key."""
    def one(zi, key):
        tokens, lengths = optimus.generate(model, variables["params"], zi[None], key, max_length=max_length,
                                           greedy=greedy)
        return tokens[0], lengths[0]

    return jax.vmap(one)(z, keys)


# ----------------------------------------------------------------------------------------------------
# The pipeline


def _is_released(source: str) -> bool:
    """A `released:` file, or a workdir converted from the released files (it holds RELEASED_MARKER)."""
    kind, _, where = source.partition(":")
    if kind == "workdir":
        return (pathlib.Path(resolve_checkpoint(where.partition("#")[0])[0]) / RELEASED_MARKER).is_file()
    return kind == "released"


def _resolve_wiring(config, sources: Mapping[str, str]) -> tuple[str, bool]:
    released = any(_is_released(sources[name]) for name in UNETS)
    wiring = ("own" if released else "others") if config.wiring == "auto" else config.wiring
    aliased = released if config.aliased_skip == "auto" else config.aliased_skip
    if wiring not in ("own", "others"):
        raise ConfigError(f"wiring: {wiring!r} is not 'auto', 'own' or 'others'")
    if not isinstance(aliased, bool):
        raise ConfigError(f"aliased_skip: {aliased!r} is not 'auto', true or false")
    return wiring, aliased


def _resolve_latent_scales(config) -> None:
    """Coders configured with latent_scale "measured" take the scale their weights' workdir records
    (codi_jax.train.handoff.measured_latent_scale); in place."""
    from codi_jax.train.handoff import measured_latent_scale

    for name in catalogue.LATENT_CODERS:
        spec = config.models[name]
        if spec.get("latent_scale") != "measured":
            continue
        kind, _, where = str(config.components[name]).partition(":")
        scale = measured_latent_scale(resolve_checkpoint(where.partition("#")[0])[0], name) \
            if kind == "workdir" else None
        if scale is None:
            raise ConfigError(f"models.{name}: latent_scale 'measured' needs weights from a training workdir that "
                              f"measured it; {name} comes from {config.components[name]!r}")
        spec.overrides.scale_factor = scale


def _resolve_predictions(config, sources: Mapping[str, str]) -> dict[str, str]:
    """{UNet: "eps" | "v"}: config.prediction, or with "auto" what each UNet's source says (a training
    workdir's saved model.prediction; released weights predict eps)."""
    from codi_jax.train.handoff import saved_config

    wanted = config.get("prediction", "auto")
    if wanted != "auto" and wanted not in PREDICTIONS:
        raise ConfigError(f"prediction: {wanted!r} is not 'auto' or one of {list(PREDICTIONS)}")
    out = {}
    for name in UNETS:
        kind, _, where = sources[name].partition(":")
        if wanted != "auto":
            out[name] = wanted
        elif kind == "workdir" and not _is_released(sources[name]):
            out[name] = saved_config(resolve_checkpoint(where.partition("#")[0])[0]).get("model", {}).get(
                "prediction", "eps")
        else:
            out[name] = "eps"
    return out


def _key(seed: int, stream: str):
    return jax.random.fold_in(jax.random.key(seed), _STREAMS[stream])


class CoDiPipeline:
    """Any-to-any generation; build with `from_config` or `from_checkpoint` (see the module docstring)."""

    def __init__(self, config, networks: Networks, variables: Mapping[str, Any], sources: Mapping[str, str],
                 tokenizers: Mapping[str, Any]):
        self.mel_inversion = config.get("mel_inversion", "vocoder")
        if self.mel_inversion not in MEL_INVERSIONS:
            raise ConfigError(f"mel_inversion: {self.mel_inversion!r} is not one of {list(MEL_INVERSIONS)}")
        self.config = config
        self.nets = networks
        self.variables = dict(variables)
        self.sources = dict(sources)
        self.tokenizers = dict(tokenizers)
        self.wiring, self.aliased_skip = _resolve_wiring(config, self.sources)
        self.predictions = _resolve_predictions(config, self.sources)
        self.latent_shapes = latent_shapes(config)
        self.codi_variables = {"params": {name: self.variables[name]["params"] for name in UNETS}}
        self.output_shapes = output_shapes(config, networks, self.variables)
        _check_tokenizers(self.tokenizers, networks)
        self._unconditional: dict[str, jax.Array] = {}

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config, random_init: bool = False) -> "CoDiPipeline":
        """Networks as `config.models` describes them, weights from `config.components` (all random with
        `random_init`)."""
        config = copy.deepcopy(config)
        if random_init:
            for name in COMPONENTS:
                config.components[name] = "random"
        _resolve_latent_scales(config)
        nets = build_networks(config)
        variables, sources = load_variables(config, nets)
        try:
            tokenizers = {kind: build_tokenizer(kind, config.tokenizers[kind]) for kind in ("clip", "gpt2")}
        except (OSError, ValueError) as err:
            raise ConfigError(f"tokenizers: {err}") from None
        return cls(config, nets, variables, sources, tokenizers)

    @classmethod
    def from_checkpoint(cls, path, config) -> "CoDiPipeline":
        """Every component a training workdir (or its latest checkpoint folder) holds comes from it, the
        others from `config.components`; the networks are `config.models`."""
        config = copy.deepcopy(config)
        tops = {key.split("/", 1)[0] for key in _WeightStore().checkpoint(path)}
        held = [name for name in COMPONENTS if name in tops]
        if not held:
            raise CheckpointError(f"checkpoint {path}: holds none of the components "
                                  f"{', '.join(COMPONENTS)}; it has {sorted(tops)}")
        for name in held:
            config.components[name] = f"workdir:{path}"
        return cls.from_config(config)

    # -- conditioning --------------------------------------------------------------------------------

    def _clip(self, method: str, pixels_unit_range: np.ndarray):
        """CLIP image / video token of [1, (F,) H, W, 3] pixels in [-1, 1], through the official processor."""
        size = self.nets.clip.image_size
        pixels = (clip_preprocess.preprocess_images(pixels_unit_range, size) if method == "encode_image"
                  else clip_preprocess.preprocess_videos(pixels_unit_range, size))
        return _apply(self.variables["clip"], pixels, model=self.nets.clip, method=method)

    def _encode(self, modality: str, value, seed: int):
        """One input -> its L2-normalised token [1, 1, D]."""
        if modality == "text":
            try:
                ids = self.tokenizers["clip"].encode([value], self.nets.clip.max_positions)
            except ValueError as err:
                raise RequestError(f"text: {err}") from None
            return _apply(self.variables["clip"], ids, model=self.nets.clip, method="encode_text")
        if modality == "image":
            return self._clip("encode_image", scale_to_unit_range(value)[None])
        if modality == "video":
            try:
                picked = value[sample_frame_indices(value.shape[0], int(self.config.condition_frames))]
            except ValueError as err:
                raise RequestError(f"video: {err}") from None
            return self._clip("encode_video", scale_to_unit_range(picked)[None])
        return _encode_audio(self.variables["clap"], value[None], _key(seed, "audio_crop"), model=self.nets.clap)

    def _uncond(self, modality: str):
        """The original's unconditional token: CLIP of "", of an all-zero (mid-gray) image or video in
        [-1, 1], CLAP of silence."""
        if modality not in self._unconditional:
            size = self.nets.clip.image_size
            if modality == "text":
                token = self._encode("text", "", 0)
            elif modality == "image":
                token = self._clip("encode_image", np.zeros((1, size, size, 3), np.float32))
            elif modality == "video":
                token = self._clip("encode_video",
                                   np.zeros((1, int(self.config.condition_frames), size, size, 3), np.float32))
            else:
                (silence,) = clap.init_inputs(self.nets.clap)
                token = self._encode("audio", silence[0], 0)
            self._unconditional[modality] = token
        return self._unconditional[modality]

    def condition(self, request: Request):
        """(cond, uncond) [1, 1, D] of a loaded request: inputs and their unconditional counterparts, each set
        mixed with the request's weights. A request without inputs is unconditional (empty text)."""
        if not request.input_modalities:
            token = self._uncond("text")
            return token, token
        weights = request.mix_weights()
        conds = {m: self._encode(m, getattr(request, m), request.seed) for m in request.input_modalities}
        unconds = {m: self._uncond(m) for m in request.input_modalities}
        return codi.mix_conditions(conds, weights), codi.mix_conditions(unconds, weights)

    # -- generation ----------------------------------------------------------------------------------

    def generate(self, request: Request) -> dict:
        """Outputs of one request: {"image": uint8 [H,W,3], "video": uint8 [F,H,W,3], "audio": float32 [N] at
        16 kHz, "text": str}, for the modalities it asks for."""
        return self.generate_batch([request], progress=False)[0]

    def generate_batch(self, requests: Sequence[Request], progress: bool = True,
                       on_result: Callable[[int, dict], Any] | None = None) -> list[dict]:
        """Outputs of many requests, in order; equal signatures share compiled calls of `config.batch_size`.
        Every input is read and encoded before sampling starts, so a bad one fails early. `on_result(index,
        outputs)` is called as each request's outputs are ready (the CLI writes its files then)."""
        from tqdm.auto import tqdm

        requests = [load_inputs(r) for r in requests]
        conditions = []
        for request in requests:
            try:
                conditions.append(self.condition(request))
            except RequestError as err:
                raise RequestError(f"request {request.id!r}: {err}" if request.id else str(err)) from None
        size = int(self.config.batch_size)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.signature, []).append(index)
        chunks = [idx[i:i + size] for idx in groups.values() for i in range(0, len(idx), size)]
        results: list[dict | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="generating", unit="request", disable=not progress) as bar:
            for chunk in chunks:
                outputs = self._run([requests[i] for i in chunk], [conditions[i] for i in chunk], size)
                for index, result in zip(chunk, outputs):
                    results[index] = result
                    if on_result is not None:
                        on_result(index, result)
                bar.update(len(chunk))
        return results

    def _run(self, chunk: list[Request], conditions: list[tuple], size: int) -> list[dict]:
        """One compiled sampling call (one per output with `independent`) for up to `size` requests, padded
        to `size` with copies of the last."""
        padding = size - len(chunk)
        padded, conditions = chunk + [chunk[-1]] * padding, conditions + [conditions[-1]] * padding
        cond = jnp.concatenate([c for c, _ in conditions])
        uncond = jnp.concatenate([u for _, u in conditions])
        first = chunk[0]
        default = float(self.config.defaults.guidance)
        x_T, scales = {}, {}
        for m in first.outputs:
            shape = self.latent_shapes[m]
            x_T[m] = jnp.stack([jax.random.normal(_key(r.seed, m), shape, jnp.float32) for r in padded])
            scales[m] = jnp.asarray([r.scales(default)[m] for r in padded], jnp.float32).reshape(
                (size,) + (1,) * len(shape))
        latents = {}
        for group in ([(m,) for m in first.outputs] if first.independent else [first.outputs]):
            latents.update(_sample(self.codi_variables, {m: x_T[m] for m in group}, cond, uncond,
                                   {m: scales[m] for m in group}, model=self.nets.codi, wiring=self.wiring,
                                   predictions=tuple((m, self.predictions[catalogue.UNET_OF[m]]) for m in group),
                                   aliased_skip=self.aliased_skip, method=first.sampler, steps=first.steps))
        decoded = {m: self._decode(m, z, padded) for m, z in latents.items()}
        return [{m: decoded[m][i] for m in first.outputs} for i in range(len(chunk))]

    def _decode(self, modality: str, z, requests: Sequence[Request]):
        nets, v = self.nets, self.variables
        if modality in ("image", "video"):
            return np.asarray(_decode_pixels(v["image_vae"], z, model=nets.image_vae))
        if modality == "audio" and self.mel_inversion == "griffin_lim":
            from codi_jax.eval import griffin_lim

            return griffin_lim.mels_to_waves(np.asarray(_decode_mel(v["audio_vae"], z, vae=nets.audio_vae)),
                                             self.output_shapes["audio"][0], GRIFFIN_LIM_ITERATIONS)
        if modality == "audio":
            return np.asarray(_decode_audio(v["audio_vae"], v["vocoder"], z, vae=nets.audio_vae,
                                            vocoder=nets.vocoder, samples=self.output_shapes["audio"][0]))
        keys = jnp.stack([_key(r.seed, "text_decoding") for r in requests])
        tokens, lengths = _decode_text(v["optimus"], z, keys, model=nets.optimus,
                                       max_length=int(self.config.text_max_tokens),
                                       greedy=self.config.text_decoding == "greedy")
        return optimus.decode_text(self.tokenizers["gpt2"], tokens, lengths)

    # -- files ---------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """The run's settings, as request.json records them next to the request."""
        return {"config": self.config.variant, "components": dict(self.sources), "wiring": self.wiring,
                "aliased_skip": self.aliased_skip, "prediction": dict(self.predictions),
                "batch_size": int(self.config.batch_size),
                "mel_inversion": self.mel_inversion,
                "text_decoding": self.config.text_decoding, "image_shape": list(self.output_shapes["image"]),
                "video_shape": list(self.output_shapes["video"]), "video_fps": float(self.config.video_fps),
                "audio_seconds": self.output_shapes["audio"][0] / media.AUDIO_RATE,
                "audio_sample_rate": media.AUDIO_RATE}

    def save(self, folder, outputs: Mapping[str, Any], request: Request) -> list[pathlib.Path]:
        """Write a generation's files into `folder`, then request.json: the request's fields (a --batch line
        that replays it), plus "run" (the pipeline's settings) and "files"."""
        written = media.write_outputs(folder, outputs, fps=float(self.config.video_fps))
        record = {**request.to_json(), "run": self.describe(), "files": sorted(p.name for p in written)}
        request_json = pathlib.Path(folder) / "request.json"
        request_json.write_text(json.dumps(record, indent=2) + "\n")
        return written + [request_json]
