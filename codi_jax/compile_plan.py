"""python -m codi_jax.compile_plan --config FILE[:variant] --topology SLICE [--batch N] [--mesh fsdp=4,tensor=1]
    [--remat POLICY] [--slices N] [--max_batch] [--json FILE] [--config.key=value ...]

Compiles, on this host and for a TPU slice it does not have (parallel.topology: libtpu's compiler on
compile-only devices), the program a pod would run, and prints what it needs per device:

    python -m codi_jax.compile_plan --config configs/image_ldm.py:full --topology v5p-8 --batch 64 --max_batch
    python -m codi_jax.compile_plan --config configs/sample.py:full --topology v5p-8 --batch 4 --outputs video,audio

A training config compiles the trainer's own step (loop.Trainer on the slice's devices: the stage, its state
layout and shardings, the jitted step with the state donated), once per data objective, on a batch of
ShapeDtypeStructs shaped as the data pipeline yields it. A sampling config (configs/sample.py) compiles the
pipeline's sampling call (the whole denoising loop, classifier-free guidance batched, the outputs generated
jointly) with the UNets' weights laid out by the logical rules and the requests split over data x fsdp; its mesh
defaults to data over every chip (weights replicated). Nothing is allocated or run.

Per program: arguments, outputs, donated (aliased) bytes, temps and code per device, their total against the
chip's HBM, FLOPs per device per step (parallel.footprint says what they count), compile time and this process's
peak host memory. --max_batch then finds the largest global batch whose program stays under --hbm_fraction of
HBM (a few more compiles). --json writes every figure. A full-size step needs up to ~19 GB of host memory and ~10 minutes to compile: one at a time.

Exit codes: 0 compiled (fitting or not: the report says), 2 bad flags, config, topology or batch (one line).
"""
import os

# The host only traces; the programs are compiled for the topology's devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config or configs/sample.py[:variant].")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice (v5p-8, v5e-16, v4-32, ...) or chip grid (v5p:2x2x1).")
_SLICES = flags.DEFINE_integer("slices", 1, "Slices joined over DCN (the data axis spans them unless --dcn).")
_DCN = flags.DEFINE_string("dcn", "", "Mesh axes across slices, e.g. data=2 (default: data=--slices).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (sampling: requests per call). Default: the config's.")
_MESH = flags.DEFINE_string("mesh", "", "Mesh axes within a slice, e.g. fsdp=4,tensor=1 (unnamed axes 1, one may "
                                        "be -1). Default: the config's (sampling: data over every chip).")
_REMAT = flags.DEFINE_string("remat", None, "config.remat_policy of the train step (none, full, dots_saveable, ...).")
_OBJECTIVES = flags.DEFINE_list("objective", [], "Data objectives to compile (default: every one).")
_OUTPUTS = flags.DEFINE_list("outputs", ["video", "audio"], "Sampling: the jointly generated outputs.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling: denoising steps (default: the config's, 50).")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampling: ddim or dpmpp_2m (default: the config's).")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False, "Also search the largest global batch that fits.")
_FRACTION = flags.DEFINE_float("hbm_fraction", 0.9, "Share of HBM a program may use to count as fitting.")
_JSON = flags.DEFINE_string("json", None, "Write the figures of every program to this file.")


class UsageError(ValueError):
    pass


def _fail(message: str) -> None:
    print(f"codi_jax.compile_plan: {message}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)


def _axis_sizes(text: str) -> dict:
    """'fsdp=4,tensor=2' -> {"fsdp": 4, "tensor": 2}."""
    from codi_jax.parallel.mesh import AXES

    sizes = {}
    for part in filter(None, text.split(",")):
        axis, _, size = part.partition("=")
        try:
            sizes[axis.strip()] = int(size)
        except ValueError:
            raise UsageError(f"mesh axis {part!r}: expected AXIS=SIZE, e.g. fsdp=4") from None
        if axis.strip() not in AXES:  # else dropped unseen: --mesh fsdp=4,tensr=2 would compile tensor=1
            raise UsageError(f"mesh axis {axis.strip()!r}: expected one of {', '.join(AXES)}")
    return sizes


def _sharded(mesh, shapes: dict) -> dict:
    import jax
    from jax.sharding import NamedSharding

    from codi_jax.parallel.mesh import batch_spec

    return {k: jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, batch_spec(len(s)))) for k, (s, d) in
            shapes.items()}


def train_programs(config, devices):
    """(mesh, batch quantum, {program name: batch -> compiled train step}) of a training config."""
    from codi_jax.data import pipeline as data_pipeline
    from codi_jax.parallel.mesh import batch_divisor
    from codi_jax.train import loop

    trainer = loop.Trainer(config, config.workdir, devices)  # its workdir is never touched before run()
    names = list(_OBJECTIVES.value) or sorted(config.data.objectives)
    unknown = sorted(set(names) - set(config.data.objectives))
    if unknown:
        raise UsageError(f"unknown objective(s) {unknown}; the config has {sorted(config.data.objectives)}")

    def program(name):
        return lambda batch: trainer.lower(_sharded(trainer.mesh, data_pipeline.batch_shapes(
            config.data, name, batch))).compile()

    quantum = batch_divisor(trainer.mesh) * config.grad_accum_steps
    return trainer.mesh, quantum, {f"train {name}": program(name) for name in names}


def sample_programs(config, devices, mesh_config: dict):
    """(mesh, batch quantum, {program name: batch -> compiled sampling call}) of a sampling config, run as the
    released weights are (wiring "own", aliased skip, eps) where the config says "auto": the same work either way."""
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from codi_jax import sampling
    from codi_jax.models import catalogue, networks
    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.parallel.partitioning import tree_shardings, unbox_values
    from codi_jax.train import loop

    outputs = tuple(_OUTPUTS.value)
    bad = [m for m in outputs if m not in catalogue.MODALITIES]
    if bad or not outputs:
        raise UsageError(f"--outputs {','.join(outputs)}: expected a subset of {','.join(catalogue.MODALITIES)}")
    nets = sampling.build_networks(config)
    mesh = mesh_lib.make_mesh(mesh_config, devices)
    with nn.logical_axis_rules(()):  # only the logical names are read, as in sharded_init
        boxed = {name: jax.eval_shape(functools.partial(
            networks.init_variables, name, nets.modules[name]), jax.random.key(0))["params"]
            for name in catalogue.UNETS}
    weights = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      unbox_values(boxed), tree_shardings(boxed, mesh))}
    latents = sampling.latent_shapes(config)
    width = nets.clip.projection_dim
    prediction = "eps" if config.prediction == "auto" else config.prediction
    static = dict(model=nets.codi, wiring="own" if config.wiring == "auto" else config.wiring,
                  aliased_skip=True if config.aliased_skip == "auto" else config.aliased_skip,
                  method=_SAMPLER.value or config.defaults.sampler, steps=_STEPS.value or config.defaults.steps,
                  predictions=tuple((m, prediction) for m in outputs))

    def compile_at(batch):
        f32 = jnp.float32
        x_T = _sharded(mesh, {m: ((batch,) + latents[m], f32) for m in outputs})
        cond = _sharded(mesh, {"cond": ((batch, 1, width), f32), "uncond": ((batch, 1, width), f32)})
        scales = _sharded(mesh, {m: ((batch,) + (1,) * len(latents[m]), f32) for m in outputs})
        with loop.sharding_context(mesh):
            return sampling.compiled.sample.lower(weights, x_T, cond["cond"], cond["uncond"], scales, **static).compile()

    name = f"sample {'+'.join(outputs)}, {static['method']} {static['steps']} steps, guided"
    return mesh, mesh_lib.batch_divisor(mesh), {name: compile_at}


def _host_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def plan(name: str, compile_at, batch: int, quantum: int, chip, *, fraction: float, search: bool) -> dict:
    """Compile `name` at `batch` (and, with `search`, at the batches largest_batch asks for): its figures."""
    from jax.errors import JaxRuntimeError

    from codi_jax.parallel import footprint

    figures: dict[int, dict] = {}

    def total_at(b: int):
        if b not in figures:
            start = time.perf_counter()
            try:
                fp = footprint.Footprint.of(compile_at(b))
                figures[b] = {"footprint": vars(fp), "total": fp.total, "error": None}
            except JaxRuntimeError as e:
                if not footprint.is_out_of_memory(e):
                    raise
                figures[b] = {"footprint": None, "total": None, "error": str(e).strip().splitlines()[0]}
            figures[b]["compile_s"] = time.perf_counter() - start
        return figures[b]["total"]

    limit = int(fraction * chip.hbm_bytes)
    total_at(batch)
    record = {"program": name, "batch": batch, **figures[batch], "limit_fraction": fraction}
    record["fits"] = record["total"] is not None and record["total"] <= limit
    if search:
        best, _ = footprint.largest_batch(total_at, batch, quantum, limit)
        record["max_batch"] = best
    record["tried"] = {str(b): f["total"] for b, f in sorted(figures.items())}
    record["host_peak_bytes"] = _host_peak_bytes()
    return record


def _print(header: list[str], record: dict, chip) -> None:
    from codi_jax.parallel import footprint
    from codi_jax.parallel.topology import GIB

    print("\n".join(header))
    print(f"{record['program']}, global batch {record['batch']}")
    rows = []
    if record["footprint"] is not None:
        rows += footprint.Footprint(**record["footprint"]).rows(chip.hbm_bytes)
        verdict = "fits" if record["fits"] else "does not fit"
        rows.append(("verdict", f"{verdict} under {100 * record['limit_fraction']:.0f} % of HBM"))
    else:
        rows.append(("verdict", f"does not fit: {record['error']}"))
    rows.append(("compile", f"{record['compile_s']:.0f} s; host peak {record['host_peak_bytes'] / GIB:.1f} GiB"))
    if "max_batch" in record:
        tried = ", ".join(f"{b}: {'out of memory' if t is None else footprint.size(t)}"
                          for b, t in record["tried"].items())
        rows.append(("largest batch", f"{record['max_batch']} (compiled {tried})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def run(config, argv) -> list[dict]:
    from codi_jax.parallel import topology

    if _SLICES.value < 1:
        raise UsageError(f"--slices must be at least 1, got {_SLICES.value}")
    # The flags are checked before libtpu loads (it logs to stderr on a host without a TPU).
    named = _axis_sizes(_MESH.value)
    ici = {a: named.get(a, 1) for a in ("data", "fsdp", "tensor")} if named else None
    dcn = _axis_sizes(_DCN.value) or ({"data": _SLICES.value} if _SLICES.value > 1 else {})
    training = "stage" in config
    if training and "objectives" not in config.data:
        raise UsageError(f"stage {config.stage!r} has no config.data.objectives (it makes its own batches); "
                         "compile_plan compiles stages fed by codi_jax.data.pipeline")
    if _BATCH.value is not None:
        config.batch_size = _BATCH.value
    if config.batch_size < 1:
        raise UsageError(f"--batch must be positive, got {config.batch_size}")
    devices, chip = topology.tpu_devices(_TOPOLOGY.value, _SLICES.value)
    if training:
        config.mesh.update(ici or {})
        if dcn:
            config.mesh.dcn = dcn
        if _REMAT.value is not None:
            config.remat_policy = _REMAT.value
        mesh, quantum, programs = train_programs(config, devices)
    else:
        mesh_config = {"ici": ici or {"data": -1, "fsdp": 1, "tensor": 1}, "dcn": dcn}
        mesh, quantum, programs = sample_programs(config, devices, mesh_config)
        if config.batch_size % quantum:
            raise UsageError(f"batch {config.batch_size} does not split over data x fsdp = {quantum} of mesh "
                             f"{dict(mesh.shape)}; e.g. --batch {quantum}")
    grid = topology.parse(_TOPOLOGY.value)[1]
    settings = {"remat": config.get("remat_policy", "none"), "attn_impl": config.attn_impl,
                "dtype": config.get("dtype", config.get("compute_dtype"))}
    header = [f"{' '.join(argv)}",
              f"{_TOPOLOGY.value} ({grid} x {_SLICES.value}): {len(devices)} x {devices[0].device_kind}, "
              f"{chip.hbm_bytes / 2 ** 30:.0f} GiB HBM each; mesh {dict(mesh.shape)}; "
              + "; ".join(f"{k} {v}" for k, v in settings.items())]
    records = []
    for name, compile_at in programs.items():
        record = plan(name, compile_at, config.batch_size, quantum, chip, fraction=_FRACTION.value,
                      search=_MAX_BATCH.value)
        record.update(command=" ".join(argv), topology=_TOPOLOGY.value, grid=grid, slices=_SLICES.value,
                      devices=len(devices), chip=chip.name, hbm_bytes=chip.hbm_bytes, peak_flops=chip.peak_flops,
                      mesh=dict(mesh.shape), **settings)
        _print(header, record, chip)
        records.append(record)
    return records


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    if _CONFIG.value is None or not _TOPOLOGY.value:
        _fail("--config and --topology are required, e.g. --config configs/image_ldm.py:full --topology v5p-8")
    from codi_jax.parallel.mesh import MeshConfigError
    from codi_jax.parallel.topology import TopologyError
    from codi_jax.train.errors import ConfigError

    command = ["python -m codi_jax.compile_plan"] + sys.argv[1:]
    try:
        records = run(_CONFIG.value, command)
    except (UsageError, TopologyError, ConfigError, MeshConfigError) as e:
        _fail(str(e))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(records, f, indent=1)


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flag syntax, unknown --config.key, unreadable config file
        _fail(f"bad flags: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
