"""Config files, the form every CLI's --config takes: `path/to/config.py[:variant]` -> its get_config(variant)."""
from __future__ import annotations

import importlib.util
import pathlib

from codi_jax.errors import ConfigError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(spec: str):
    """The config of `FILE[:variant]`, FILE relative to the cwd or else to the repository (so `configs/x.py`
    works from anywhere in a checkout). ConfigError for a missing file or one without get_config(); what
    get_config raises (ValueError for an unknown variant) is left to the caller."""
    path_text, _, variant = str(spec).partition(":")
    path = pathlib.Path(path_text)
    if not path.is_file() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise ConfigError(f"no such file {path_text}")
    module_spec = importlib.util.spec_from_file_location(f"_codi_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config()")
    return module.get_config(variant) if variant else module.get_config()


def parent_of(config, path: str):
    """(the section holding it, the last name) of an existing dotted key `path` of `config`, for an override;
    KeyError naming the first part of the path that is not there."""
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        if name not in node:
            raise KeyError(name)
        node = node[name]
    if leaf not in node:
        raise KeyError(leaf)
    return node, leaf
