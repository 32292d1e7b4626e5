"""Where a sampling config's weights come from: random, a training workdir, or the released files.

`config.components.<name>` is "random" (drawn on the host from `init_seed`), "workdir:DIR[#subtree]" (the latest
checkpoint of a training run, EMA weights where it kept them) or "released:FILE" (a released .pth / .safetensors
through its converter). Every source is checked against the configured networks' shapes before anything runs.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from codi_jax import checkpoints, config_files
from codi_jax.errors import ConfigError
from codi_jax.models import catalogue, networks
from codi_jax.models.catalogue import NAMES as COMPONENTS
from codi_jax.models.networks import Networks

# Written by codi_jax.convert.released into every workdir it converts: weights as released, which the
# sampler runs with the released code's wiring (see `wiring` in configs/sample.py).
RELEASED_MARKER = "released.json"


class CheckpointError(ConfigError):
    """A weights source (workdir, checkpoint folder, released file) that cannot be read or does not fit."""



def build_networks(config) -> Networks:
    """The networks `config.models` describes ({variant, overrides} per component, the training configs'
    form), in the config's compute dtype."""
    return Networks(config.models, COMPONENTS, dtype=jnp.dtype(config.compute_dtype), attn_impl=config.attn_impl)


@functools.lru_cache(maxsize=64)
def _abstract(name: str, module) -> dict:
    init = lambda rng: networks.init_variables(name, module, rng)  # noqa: E731
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
    try:
        tops = checkpoints.saved_networks(resolve_checkpoint(path)[0])
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    return [name for name in COMPONENTS if name in tops]


def _networks(spec) -> dict:
    """A `models.<component>` entry as plain JSON values (tuples as lists), without the latent scale a run
    measured and stored in it."""
    spec = json.loads(json.dumps(spec.to_dict() if hasattr(spec, "to_dict") else spec))
    spec.pop("latent_scale", None)
    spec.get("overrides", {}).pop("scale_factor", None)
    return spec


def config_for_checkpoint(path):
    """The sampling config a checkpoint implies. A workdir converted from the released files:
    configs/sample.py:full. A training workdir: the configs/sample.py size (tiny, cpu, full) whose networks are
    the ones its run trained, every component the workdir does not hold taken from the workdirs its run started
    from (its config.init_from), else from that size's own source; a coder whose latent scale the run measured
    takes it from its weights' workdir. ConfigError when no size fits."""
    workdir, _ = resolve_checkpoint(path)
    if (pathlib.Path(workdir) / RELEASED_MARKER).is_file():
        return config_files.load("configs/sample.py:full")
    saved = checkpoints.saved_config(workdir)
    trained = saved.get("model", {})
    for size in ("tiny", "cpu", "full"):
        config = config_files.load(f"configs/sample.py:{size}")
        names = [n for n in config.models if n in trained]
        if names and all(_networks(trained[n]) == _networks(config.models[n]) for n in names):
            break
    else:
        raise ConfigError(f"--checkpoint {path}: its networks ({saved.get('stage', 'unknown stage')}) are none of "
                          "configs/sample.py's sizes (tiny, cpu, full); give --config")
    for source in (p for p in saved.get("init_from", {}).values() if isinstance(p, str) and p):
        for name in held_components(source):
            config.components[name] = f"workdir:{source}"
    for name in catalogue.LATENT_CODERS:  # latents scaled as the run scaled them
        if trained.get(name, {}).get("latent_scale") == "measured":
            config.models[name].latent_scale = "measured"
    return config


class WeightStore:
    """Reads each workdir checkpoint and released file once, however many components come from it."""

    def __init__(self):
        self._checkpoints: dict[str, dict] = {}
        self._state_dicts: dict[str, dict] = {}

    def checkpoint(self, path) -> dict[str, np.ndarray]:
        """{param path: array} of a workdir's latest checkpoint (EMA weights where the run kept them)."""
        workdir, step = resolve_checkpoint(path)
        # Absolute: restore_params caches by its argument, and a relative path names another folder after a chdir.
        workdir = os.path.abspath(workdir)
        if workdir not in self._checkpoints:
            try:
                self._checkpoints[workdir] = checkpoints.restore_params(workdir, True)
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


def _from_workdir(store: WeightStore, name: str, where: str) -> dict:
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


def _from_released(store: WeightStore, name: str, path: str) -> dict:
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
    store, variables, sources = WeightStore(), {}, {}
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


def is_released(source: str) -> bool:
    """A `released:` file, or a workdir converted from the released files (it holds RELEASED_MARKER)."""
    kind, _, where = source.partition(":")
    if kind == "workdir":
        return (pathlib.Path(resolve_checkpoint(where.partition("#")[0])[0]) / RELEASED_MARKER).is_file()
    return kind == "released"



def resolve_latent_scales(config) -> None:
    """Coders configured with latent_scale "measured" take the scale their weights' workdir records
    (codi_jax.checkpoints.measured_latent_scale); in place."""
    for name in catalogue.LATENT_CODERS:
        spec = config.models[name]
        if spec.get("latent_scale") != "measured":
            continue
        kind, _, where = str(config.components[name]).partition(":")
        scale = checkpoints.measured_latent_scale(resolve_checkpoint(where.partition("#")[0])[0], name) \
            if kind == "workdir" else None
        if scale is None:
            raise ConfigError(f"models.{name}: latent_scale 'measured' needs weights from a training workdir that "
                              f"measured it; {name} comes from {config.components[name]!r}")
        spec.overrides.scale_factor = scale
