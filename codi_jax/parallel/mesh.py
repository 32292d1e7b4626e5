"""Device meshes from config, batch sharding, and multi-host start-up.

Mesh axes are always ("data", "fsdp", "tensor"). A config gives their sizes within a
slice (`ici`, one entry may be -1 to take the remaining devices) and, for multi-slice
pods, across slices (`dcn`, default all 1).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")


class MeshConfigError(ValueError):
    pass


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill a single -1 so that the product equals num_devices; reject anything that does not divide."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != len(AXES):
        raise MeshConfigError(f"mesh needs {len(AXES)} sizes for axes {AXES}, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshConfigError(f"mesh sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise MeshConfigError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise MeshConfigError(
                f"mesh {dict(zip(AXES, sizes))} does not divide the {num_devices} devices")
        sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    elif fixed != num_devices:
        raise MeshConfigError(
            f"mesh {dict(zip(AXES, sizes))} needs {fixed} devices but {num_devices} are available")
    return sizes


def make_mesh(mesh_config: Mapping | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from `{"ici": {"data":..,"fsdp":..,"tensor":..}, "dcn": {...}}` (or flat {"data":..,...})."""
    mesh_config = dict(mesh_config or {})
    ici_cfg = dict(mesh_config.get("ici", mesh_config))
    dcn_cfg = dict(mesh_config.get("dcn", {}))
    unknown = (set(ici_cfg) | set(dcn_cfg)) - set(AXES) - {"ici", "dcn"}
    if unknown:
        raise MeshConfigError(f"unknown mesh axes {sorted(unknown)}; axes are {AXES}")
    devices = list(devices if devices is not None else jax.devices())
    dcn = tuple(int(dcn_cfg.get(a, 1)) for a in AXES)
    num_slices = math.prod(dcn)
    if len(devices) % num_slices:
        raise MeshConfigError(f"dcn mesh {dict(zip(AXES, dcn))} does not divide {len(devices)} devices")
    ici = resolve_axis_sizes([ici_cfg.get(a, -1 if a == "fsdp" else 1) for a in AXES],
                             len(devices) // num_slices)
    axis_types = (AxisType.Auto,) * len(AXES)
    if num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(ici)
    return Mesh(grid, AXES, axis_types=axis_types)


def batch_spec(ndim: int) -> P:
    """Batch arrays are split on their leading dim over data x fsdp."""
    return P(("data", "fsdp"), *([None] * (ndim - 1)))


def batch_shardings(batch, mesh: Mesh):
    return jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(np.ndim(x))), batch)


def shard_host_batch(batch, mesh: Mesh):
    """Assemble global arrays from this host's share of the batch (works on one or many hosts)."""
    def one(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, batch_spec(x.ndim))
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, batch)


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids=None) -> None:
    """jax.distributed.initialize for pods; on TPU VMs and SLURM/GPU clusters the arguments are discovered.

    On CPU (tests, localhost multi-process) the coordinator, process count and id are given
    explicitly, and cross-process collectives use gloo.
    """
    if coordinator_address is not None and jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
