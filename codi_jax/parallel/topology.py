"""TPU slices as compile-only devices: libtpu's own compiler on a host with no TPU attached.

    devices, chip = topology.tpu_devices("v5p-8")            # or the chip grid "v5p:2x2x1"
    devices, chip = topology.tpu_devices("v5e-16", slices=2)  # two slices joined over DCN

A mesh built on these devices (parallel.mesh.make_mesh(config, devices)) lowers and compiles a jitted
step ahead of time, and the executable's memory_analysis() / cost_analysis() are the TPU's per-device
HBM and FLOP figures. Needs libtpu (`pip install -e ".[tpu]"`); JAX_PLATFORMS=cpu keeps the rest of the
process on the CPU backend.
"""
from __future__ import annotations

import dataclasses
import os
import re

GIB = 2 ** 30


class TopologyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s of one JAX device (v4 and v5p run their two cores as one: megacore)
    megacore: bool


CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, megacore=True),
    "v5e": Chip("v5e", 16 * GIB, 197e12, megacore=False),
    "v5p": Chip("v5p", 95 * GIB, 459e12, megacore=True),
    "v6e": Chip("v6e", 32 * GIB, 918e12, megacore=False),
}
# Cloud TPU slice names -> chip grid. The number counts TensorCores on v4 / v5p (two per chip) and chips on
# v5e / v6e, so v5p-8 is 4 chips and v5e-16 is 16.
SLICES = {
    "v4-8": "2x2x1", "v4-16": "2x2x2", "v4-32": "2x2x4", "v4-64": "2x4x4", "v4-128": "4x4x4",
    "v5p-8": "2x2x1", "v5p-16": "2x2x2", "v5p-32": "2x2x4", "v5p-64": "2x4x4", "v5p-128": "4x4x4",
    "v5e-4": "2x2", "v5e-8": "2x4", "v5e-16": "4x4", "v5e-32": "4x8", "v5e-64": "8x8", "v5e-256": "16x16",
    "v6e-4": "2x2", "v6e-8": "2x4", "v6e-16": "4x4", "v6e-32": "4x8", "v6e-64": "8x8", "v6e-256": "16x16",
}
_GRID = re.compile(r"^(v4|v5e|v5p|v6e):(\d+x\d+(?:x\d+)?)$")


def parse(name: str) -> tuple[Chip, str]:
    """(chip, libtpu topology name) of a slice name ("v5p-8") or a chip grid ("v5p:2x2x1")."""
    if name in SLICES:
        generation = name.split("-")[0]
        return CHIPS[generation], f"{generation}:{SLICES[name]}"
    match = _GRID.match(name)
    if not match:
        raise TopologyError(f"unknown TPU topology {name!r}; expected a slice name ({', '.join(SLICES)}) or "
                            f"a chip grid such as v5p:2x2x1 (generations {', '.join(CHIPS)})")
    return CHIPS[match.group(1)], name


def tpu_devices(name: str, slices: int = 1):
    """(compile-only devices of `slices` copies of the slice, chip); slices > 1 are joined over DCN."""
    chip, grid = parse(name)
    if slices < 1:
        raise TopologyError(f"slices must be at least 1, got {slices}")
    # Another jax process on this host that initialised the TPU backend at import (and found no TPU) holds
    # libtpu's single-process lockfile; compile-only devices share no chip with it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    options = {"chip_config_name": "megacore"} if chip.megacore else {}
    if slices > 1:
        options["num_slices"] = slices
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=grid, **options).devices
    except RuntimeError as e:  # no libtpu, or libtpu rejects the grid
        raise TopologyError(f"TPU topology {name!r}: {str(e).splitlines()[0]}") from None
    return list(devices), chip
