"""A generation request: its inputs, outputs and sampler settings, checked field by field, and batch files.

A `Request` names its inputs (any subset of text / image / video / audio, each with a mixing weight), its outputs
(any non-empty subset of the same four) and the sampler settings; every bad field is a `RequestError` with a
one-line reason. `read_batch_file` reads a JSONL file of them, `load_inputs` their media files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from codi_jax import media
from codi_jax.diffusion import samplers
from codi_jax.diffusion.schedule import NUM_TIMESTEPS
from codi_jax.models.catalogue import MODALITIES

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
