"""The earlier stages a run stands on, built first when its config lists them (`config.prerequisites`).

Each entry is a stage config and its overrides, as the command line would give them:
`"configs/image_ldm.py:tiny total_steps=200 model.prediction=v"`. An entry runs in WORKDIR/stages/<stage> (the
stage being the config file's name) unless the run's own `init_from.<stage>` already names a workdir, and hands
its workdir to every later entry, and to the run, whose `init_from.<stage>` is empty. A finished entry (its final
checkpoint exists) is skipped, an interrupted one resumes: running the command again picks up where it stopped.
"""
from __future__ import annotations

import ast
import pathlib
import time
from typing import Callable

import ml_collections
from absl import logging

from codi_jax import config_files
from codi_jax.train.errors import ConfigError


def parse(entry: str) -> tuple[str, dict]:
    """'FILE[:variant] key=value ...' -> (spec, {dotted key: value}); values read as Python literals where they
    are one (numbers, booleans, tuples), else kept as strings."""
    spec, *assignments = entry.split()
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"config.prerequisites: {assignment!r} in {entry!r} is not key=value")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return spec, overrides


def stage_name(spec: str) -> str:
    """configs/image_ldm.py:tiny -> image_ldm."""
    return pathlib.Path(spec.split(":", 1)[0]).stem


def load(entry: str) -> ml_collections.ConfigDict:
    """The entry's config with its overrides applied (a key the config lacks is a ConfigError)."""
    spec, overrides = parse(entry)
    config = config_files.load(spec)
    for key, value in overrides.items():
        try:
            node, leaf = config_files.parent_of(config, key)
        except KeyError:
            raise ConfigError(f"config.prerequisites: {spec} has no key {key}") from None
        try:
            node[leaf] = value
        except TypeError as e:  # ml_collections keeps each field's type
            raise ConfigError(f"config.prerequisites: {spec} {key}={value!r}: {e}") from None
    return config


def hand_over(config: ml_collections.ConfigDict, built: dict[str, str]) -> None:
    """Point every empty `init_from.<stage>` of `config` at the workdir built for that stage."""
    for source, path in built.items():
        if source in config.init_from and not config.init_from[source]:
            config.init_from[source] = path


def finished(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> bool:
    directory = workdir / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    return bool(steps) and max(steps) >= config.total_steps


def build(config: ml_collections.ConfigDict, workdir: str, train: Callable) -> None:
    """Run (or skip) each prerequisite of `config` through `train(config, workdir)` and point the config's empty
    init_from entries at their workdirs."""
    entries = list(config.get("prerequisites", ()))
    built = {source: path for source, path in config.init_from.items() if isinstance(path, str) and path}
    for index, entry in enumerate(entries, 1):
        stage, name = load(entry), stage_name(entry.split()[0])
        if name in built:
            logging.info("prerequisite %d/%d %s: given (init_from.%s=%s)", index, len(entries), name, name,
                         built[name])
            continue
        hand_over(stage, built)
        stage_dir = pathlib.Path(workdir).resolve() / "stages" / name  # absolute: later runs read it from anywhere
        if finished(stage, stage_dir):
            logging.info("prerequisite %d/%d %s: finished in %s, skipped", index, len(entries), name, stage_dir)
        else:
            logging.info("prerequisite %d/%d %s: %d steps into %s", index, len(entries), name, stage.total_steps,
                         stage_dir)
            start = time.perf_counter()
            train(stage, str(stage_dir))
            logging.info("prerequisite %d/%d %s: done in %.0f s", index, len(entries), name,
                         time.perf_counter() - start)
        built[name] = str(stage_dir)
    hand_over(config, built)
