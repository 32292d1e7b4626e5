"""Digests of a train state's values: written with every checkpoint, checked after every restore.

A digest is computed from the values themselves (on the host, from each process's shards), not from the
files, so it does not depend on how orbax and TensorStore lay the arrays out on disk (orbax 0.12 checksums only
the shard index of zarr3 arrays, not the data), on the mesh, or on the number of hosts: a
checkpoint written on 8 devices verifies when restored onto 1. Per leaf it is two 32-bit sums,
over all elements, of a bijective mix of (the element's bits, its flat index); unsigned addition
wraps and commutes, so the sums are exact in any reduction order. One changed element always
changes both sums; other changes go unnoticed with odds near 2^-64. The same pass finds the
floating leaves that hold NaN or inf.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np

_SALTS = (0x9E3779B9, 0x7F4A7C15)  # one per sum; any two distinct constants


def _mix(h: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser: a bijection of uint32 in which every input bit flips half the output bits."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _as_uint32(x: np.ndarray) -> np.ndarray:
    """The element bits as uint32 (8-byte types gain a last axis of two words)."""
    if x.dtype.itemsize == 4:
        return x.view(np.uint32)
    if x.dtype.itemsize == 8:
        return x.view(np.uint32).reshape(x.shape + (2,))
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}")).astype(np.uint32)


def _global_index(shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Row-major element index (mod 2^32) in the global array of the elements one shard holds."""
    flat = np.zeros((), np.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        positions = np.arange(shape[axis], dtype=np.uint64)[index[axis]] * np.uint64(stride)
        flat = flat + (positions % 2**32).astype(np.uint32).reshape((-1,) + (1,) * (len(shape) - 1 - axis))
        stride *= shape[axis]
    return flat


def _leaf(leaf) -> tuple[np.ndarray, bool]:
    """(two uint32 sums, finite) over this process's share of the leaf's elements: the shards of replica 0,
    each element once, read on the host (orbax copies them there to write them anyway), so nothing compiles."""
    if isinstance(leaf, jax.Array):
        shards = [(np.asarray(sh.data), sh.index) for sh in leaf.addressable_shards if sh.replica_id == 0]
    else:
        shards = [(np.asarray(leaf), tuple(slice(None) for _ in np.shape(leaf)))]
    sums, finite = np.zeros(len(_SALTS), np.uint32), True
    for data, index in shards:
        bits = _as_uint32(data)
        positions = _global_index(tuple(np.shape(leaf)), index)
        if bits.ndim > data.ndim:  # two words per element: each word its own position
            positions = positions[..., None] * np.uint32(2) + np.arange(2, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for k, salt in enumerate(_SALTS):
                sums[k] += np.sum(_mix(bits ^ _mix(positions + np.uint32(salt))), dtype=np.uint32)
        if "float" in data.dtype.name:  # bfloat16 (ml_dtypes) included
            finite = finite and bool(np.all(np.isfinite(data.astype(np.float32))))
    return sums, finite


def _digests(leaves) -> list[tuple[np.ndarray, bool]]:
    """Per leaf (sums, finite) over every process's share: the sums add (mod 2^32) across processes."""
    local = [_leaf(x) for x in leaves]
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    sums = multihost_utils.process_allgather(np.stack([s for s, _ in local]))
    finite = multihost_utils.process_allgather(np.array([f for _, f in local]))
    with np.errstate(over="ignore"):
        total = np.sum(sums, axis=0, dtype=np.uint32)
    return [(total[i], bool(np.all(finite[:, i]))) for i in range(len(local))]


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    leaves: dict[str, dict]    # path -> {"shape": [...], "dtype": "float32", "digest": 16 hex digits}
    nonfinite: list[str]       # paths of the floating leaves holding NaN or inf


def leaf_path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def fingerprint(tree) -> Fingerprint:
    """Digests and finiteness of every leaf of `tree` (jax or numpy arrays, sharded or not)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    results = _digests([leaf for _, leaf in flat])
    leaves, nonfinite = {}, []
    for (path, leaf), (sums, finite) in zip(flat, results):
        name = leaf_path(path)
        leaves[name] = {"shape": list(leaf.shape), "dtype": str(leaf.dtype),
                        "digest": "".join(f"{int(s):08x}" for s in sums)}
        if not finite:
            nonfinite.append(name)
    return Fingerprint(leaves, nonfinite)


def json_sha256(value: Any) -> str:
    """Digest of a JSON value, independent of key order and spacing."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def record(fp: Fingerprint, config: dict) -> dict:
    """The `integrity` item of a checkpoint."""
    return {"leaves": fp.leaves, "config_sha256": json_sha256(config)}


def mismatched(saved: dict, fp: Fingerprint) -> list[str]:
    """Paths whose restored values differ from the digests in `saved` (an `integrity` item)."""
    return [path for path, leaf in saved["leaves"].items()
            if fp.leaves.get(path, {}).get("digest") != leaf["digest"]]


def layout(leaves: dict[str, dict]) -> dict[str, str]:
    """{path: "float32[64, 128]"} of fingerprint-style leaves."""
    return {path: f"{leaf['dtype']}{list(leaf['shape'])}" for path, leaf in leaves.items()}


def abstract_layout(abstract_tree) -> dict[str, str]:
    """The same for a tree of ShapeDtypeStructs (the state a run is about to restore into)."""
    return layout({leaf_path(path): {"shape": list(x.shape), "dtype": str(x.dtype)}
                   for path, x in jax.tree_util.tree_flatten_with_path(abstract_tree)[0]})
