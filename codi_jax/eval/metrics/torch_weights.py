"""Published PyTorch weight files of the metric networks -> our Flax parameter trees.

The metric networks name their Flax modules after the reference modules' attributes, so one rule maps
every key: dots become tree levels, and the leaf follows from the tensor's role (a conv weight is
transposed OI* -> *IO, a linear weight OI -> IO, a batch norm's weight / bias / running statistics become
scale / bias / mean / var). A network's `rename` adjusts the few paths that differ (Sequential indices).
Every tensor of the file must land on a parameter of the model and every parameter must be filled, with
matching shapes; `WeightsError` names the first that does not.

Weights load from local files only: a `.npz` of our flat `a/b/c` paths (what `save_npz` writes, needs no
torch) or the published `.pth` (read with torch, an optional dependency).
"""
from __future__ import annotations

import pathlib
from typing import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

# Buffers that hold no weight (BatchNorm's update counter).
SKIPPED_SUFFIXES = ("num_batches_tracked",)


class WeightsError(ValueError):
    """A weights file that is missing or does not fit the network, in one line."""


def read_state_dict(path) -> dict[str, np.ndarray]:
    """{key: float32 array} of a local .pth / .pt file (nested under 'model' or 'state_dict' accepted)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path}: no such file")
    try:
        import torch
    except ImportError:
        raise WeightsError(f"weights file {path}: reading a .pth needs torch (pip install torch); or convert it "
                           "once with `python -m codi_jax.eval.metrics.convert` to .npz") from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unusable files
        raise WeightsError(f"weights file {path}: cannot be read as a state dict ({type(err).__name__})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"weights file {path}: holds a {type(loaded).__name__}, not a state dict")
    return {k: v.detach().float().numpy() for k, v in loaded.items() if hasattr(v, "detach")}


def _leaf(key: str, value: np.ndarray, keys: set[str]) -> tuple[str, np.ndarray]:
    """(our leaf name, value in our layout) of one reference tensor."""
    prefix, _, name = key.rpartition(".")
    is_norm = f"{prefix}.running_mean" in keys
    if name == "running_mean":
        return "mean", value
    if name == "running_var":
        return "var", value
    if is_norm:
        return {"weight": "scale", "bias": "bias"}[name], value
    if name == "weight" and value.ndim >= 3:
        return "kernel", np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if name == "weight" and value.ndim == 2:
        return "kernel", value.T
    return name, value


def to_flax(state_dict: Mapping[str, np.ndarray], rename: Callable[[str], str | None] = lambda k: k) -> dict:
    """Flat {'a/b/leaf': array} from a reference state dict; `rename` maps a reference module path
    (without the leaf) to ours, or to None for tensors our network does not use."""
    keys = set(state_dict)
    flat = {}
    for key, value in state_dict.items():
        if key.endswith(SKIPPED_SUFFIXES):
            continue
        leaf, converted = _leaf(key, np.asarray(value, np.float32), keys)
        module = rename(key.rpartition(".")[0])
        if module is None:
            continue
        path = "/".join([*module.split("."), leaf]) if module else leaf
        if path in flat:
            raise WeightsError(f"two tensors map onto parameter {path}")
        flat[path] = converted
    return flat


def fit(flat: Mapping[str, np.ndarray], abstract_params, what: str, subset: bool = False) -> dict:
    """The nested param tree of `flat` after checking it against the model's abstract params. With
    `subset`, modules of the weights that a truncated network (e.g. InceptionV3 read at an early block)
    does not build are dropped instead of refused."""
    want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_params).items()}
    if subset:
        tops = {path.split("/")[0] for path in want}
        flat = {k: v for k, v in flat.items() if k.split("/")[0] in tops}
    for path, shape in want.items():
        if path not in flat:
            raise WeightsError(f"{what}: parameter {path} is missing from the weights")
        if tuple(flat[path].shape) != shape:
            raise WeightsError(f"{what}: parameter {path} has shape {list(flat[path].shape)}, the network expects "
                               f"{list(shape)}")
    extra = sorted(set(flat) - set(want))
    if extra:
        raise WeightsError(f"{what}: the weights hold {extra[0]}, which the network does not have")
    return traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(v) for k, v in flat.items()})


def save_npz(path, params) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    np.savez(path, **flat)
    return path


def load_params(path, abstract_params, convert: Callable[[Mapping[str, np.ndarray]], dict], what: str,
                subset: bool = False) -> dict:
    """Params of a network from a local weights file: our .npz, or the published .pth via `convert`
    (state dict -> flat paths). A missing file is a WeightsError naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"{what}: expected the weights file {path}, which does not exist")
    if path.suffix == ".npz":
        with np.load(path) as saved:
            flat = {k: saved[k] for k in saved.files}
    else:
        flat = convert(read_state_dict(path))
    return fit(flat, abstract_params, what, subset)


def abstract(model, *inputs) -> dict:
    """The model's params as shapes, nothing allocated."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
