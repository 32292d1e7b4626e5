"""Parameter paths, and the split of a parameter tree into trainable and frozen parts.

Paths are the "/"-joined dict keys of a flax `params` tree (e.g.
`unet_image/input_blocks_1/connector/attn2/to_q/kernel`). The train state keeps the
trainable and the frozen leaves in two separate trees, so gradients, optimizer moments
and EMA copies exist only for the trainable part; the model sees `merge(trainable, frozen)`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from flax import traverse_util

SEP = "/"


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested dict -> {path: leaf}. Leaves are whatever is not a dict (arrays, boxed arrays)."""
    return traverse_util.flatten_dict(dict(tree), sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def partition(tree: Mapping, is_trainable: Callable[[str], bool]) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding complementary subsets of the leaves."""
    flat = flatten(tree)
    trainable = {p: v for p, v in flat.items() if is_trainable(p)}
    frozen = {p: v for p, v in flat.items() if not is_trainable(p)}
    return unflatten(trainable), unflatten(frozen)


def merge(*trees: Mapping) -> dict:
    """Union of trees with disjoint leaf paths (the inverse of `partition`)."""
    flat: dict[str, Any] = {}
    for tree in trees:
        for path, leaf in flatten(tree).items():
            if path in flat:
                raise ValueError(f"parameter {path!r} is in more than one tree")
            flat[path] = leaf
    return unflatten(flat)


def regex_predicate(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A path predicate that is true where any pattern matches the whole path."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path: any(c.fullmatch(path) for c in compiled)


def subtree(tree: Mapping, prefix: str) -> dict:
    """The leaves under `prefix` (a path), re-rooted; {} if there are none."""
    flat = flatten(tree)
    head = prefix.rstrip(SEP) + SEP
    return unflatten({p[len(head):]: v for p, v in flat.items() if p.startswith(head)})
