"""Registry of convertible components: official state dict -> our parameter tree.

A component module in this package (any module not named in `_INFRA`) calls `register`
at import time. Its contract:

- `convert(sd)`: `sd` maps official state-dict keys (the component's own prefix already
  stripped, e.g. `encoder.conv_in.weight` for autokl) to arrays; returns our params tree
  (the `params` collection, unboxed). It must use only `jnp` / shape operations so that it
  also runs under `jax.eval_shape`, which is how coverage checks full-size keys without
  allocating 23 GB. Keys it reads are recorded; keys it never reads are "unused".
- `full_abstract()`: our full-size param tree as `jax.ShapeDtypeStruct`s (from eval_shape).
- `run_golden(fixture_dir, config, meta, params, io)`: build our module from the official
  constructor arguments in config.json, convert `params`, run the calls meta.json
  describes and return {output name: (ours, reference)} as numpy arrays.
- `manifest_prefix`: the component's key prefix inside the full CoDi state dict
  (`autokl.`, `model.diffusion_model.unet_image.`, ...), for coverage.
- `ignored_keys(key)`: official keys that are constants rather than learned weights
  (causal masks, position ids, STFT bases, Swin index buffers, tied copies), which the
  converter may legitimately leave unread.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

_INFRA = {"registry", "golden", "coverage", "state_dict", "layout", "lazy", "workdir", "released", "standins"}
_COMPONENTS: dict[str, "Component"] = {}


@dataclasses.dataclass(frozen=True)
class Component:
    name: str  # the `component` field of a fixture's meta.json
    convert: Callable[[Mapping[str, Any]], Any] | None = None
    full_abstract: Callable[[], Any] | None = None
    run_golden: Callable[..., dict] | None = None
    manifest_prefix: str | None = None
    ignored_keys: Callable[[str], bool] = lambda key: False


def register(component: Component) -> Component:
    if component.name in _COMPONENTS:
        raise ValueError(f"component {component.name!r} registered twice")
    _COMPONENTS[component.name] = component
    return component


def _load_all() -> None:
    import codi_jax.convert as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _INFRA:
            importlib.import_module(f"codi_jax.convert.{info.name}")


def get(name: str) -> Component:
    _load_all()
    if name not in _COMPONENTS:
        raise KeyError(f"no converter registered for component {name!r}; known: {sorted(_COMPONENTS)}")
    return _COMPONENTS[name]


def all_components() -> dict[str, Component]:
    _load_all()
    return dict(_COMPONENTS)


class TrackingDict(Mapping):
    """A read-only mapping that records which keys were read."""

    def __init__(self, data: Mapping[str, Any]):
        self._data = data
        self.read: set[str] = set()

    def __getitem__(self, key):
        if key not in self._data:
            raise KeyError(f"official key {key!r} is missing from the state dict")
        self.read.add(key)
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
