"""UNet2D sizes, FLOPs and CPU speed, and an ahead-of-time check of the full-size sharded train step.

    python benchmarks/bench_unet.py                   # table: tiny + full presets
    python benchmarks/bench_unet.py --train-step      # also: full image UNet train step on 8 fsdp devices

Table columns: parameters (jax.eval_shape, nothing allocated), GFLOPs of one forward from XLA's
cost analysis, and the CPU wall time of one jitted forward (tiny presets only). Full presets are
lowered but not compiled unless --compile-full: compiling 1.8B-parameter graphs on a CPU takes
minutes and many GB, and the lowered HLO already carries the FLOP count.

--train-step lowers and compiles (never runs) one step of the full image UNet with bf16 compute,
remat, AdamW, on a simulated (data 1, fsdp 8, tensor 1) CPU mesh, global batch 8 of 64x64 latents,
and compares the per-device argument bytes from memory_analysis with 1.15 x (params + Adam mu + nu) / 8.
"""
from __future__ import annotations

import os
import sys

if "--train-step" in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from codi_jax.models import unet  # noqa: E402
from codi_jax.parallel.mesh import batch_spec, make_mesh  # noqa: E402
from codi_jax.parallel.partitioning import tree_shardings  # noqa: E402

# (preset, label, latent shape without batch): the released inference shapes for the full presets
CASES = [
    ("tiny", "tiny image 8x8", (8, 8, 4)),
    ("tiny", "tiny video 4x8x8", (4, 8, 8, 4)),
    ("tiny_audio", "tiny audio 16x4", (16, 4, 8)),
    ("full", "full image 64x64 (512 px)", (64, 64, 4)),
    ("full", "full video 8x32x32 (256 px)", (8, 32, 32, 4)),
    ("full_audio", "full audio 256x16 (10 s)", (256, 16, 8)),
]


def _spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _inputs(model, shape, batch=1):
    return _spec(batch, *shape), _spec(batch, dtype=jnp.int32), _spec(batch, 1, model.context_dim)


def forward_row(preset: str, label: str, shape, compile_full: bool) -> dict:
    model = unet.build(preset)
    x, t, c = _inputs(model, shape)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, c)
    n_params = sum(unet.group_sizes(abstract).values())
    params = nn.meta.unbox(abstract)
    fwd = jax.jit(model.apply)
    lowered = fwd.lower(params, x, t, c)
    row = {"label": label, "params": n_params, "gflops": None, "ms": None, "note": "lowered"}
    if preset.startswith("tiny") or compile_full:
        compiled = lowered.compile()
        row["gflops"] = compiled.cost_analysis()["flops"] / 1e9
        row["note"] = "compiled"
        if preset.startswith("tiny"):
            rng = np.random.default_rng(0)
            real = jax.tree.map(lambda a: jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype), params)
            args = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32), jnp.array([500]),
                    jnp.asarray(rng.standard_normal(c.shape), jnp.float32))
            compiled(real, *args).block_until_ready()
            start, reps = time.perf_counter(), 10
            for _ in range(reps):
                compiled(real, *args).block_until_ready()
            row["ms"] = (time.perf_counter() - start) / reps * 1e3
    else:
        row["gflops"] = lowered.cost_analysis()["flops"] / 1e9
    return row


def train_step_check(batch: int = 8, side: int = 64) -> None:
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    model = unet.build("full", dtype=jnp.bfloat16, remat_policy="full")
    tx = optax.adamw(1e-4, weight_decay=1e-2)
    x, t, c = _inputs(model, (side, side, 4), batch)
    boxed = jax.eval_shape(model.init, jax.random.key(0), x, t, c)["params"]
    # Adam's mu / nu inherit the logical boxes, so one call shards params and optimiser state alike.
    abstract_state = jax.eval_shape(lambda p: (p, tx.init(p)), boxed)
    state_shardings = tree_shardings(abstract_state, mesh)
    state = nn.meta.unbox(abstract_state)
    batch_shardings = tuple(NamedSharding(mesh, batch_spec(a.ndim)) for a in (x, t, c, x))

    def step(state, x, t, c, noise):
        params, opt_state = state

        def loss_fn(p):
            eps = model.apply({"params": p}, x, t, c)
            return jnp.mean(jnp.square(eps - noise))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    jitted = jax.jit(step, in_shardings=(state_shardings, *batch_shardings),
                     out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)
    start = time.perf_counter()
    lowered = jitted.lower(state, x, t, c, x)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    mem = compiled.memory_analysis()
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(state[0]))
    budget = 1.15 * 3 * 4 * n_params / 8
    flops = compiled.cost_analysis()["flops"]
    print(f"\nfull image UNet train step: batch {batch} x {side}x{side}x4, bf16 compute, remat 'full', AdamW, "
          f"mesh data 1 x fsdp 8 x tensor 1 (lower {lower_s:.0f} s, compile {compile_s:.0f} s, not run)")
    print(f"  parameters                           {n_params:,}")
    print(f"  per-device argument bytes            {mem.argument_size_in_bytes / 2**30:8.3f} GiB")
    print(f"  1.15 x (params + Adam mu, nu) / 8    {budget / 2**30:8.3f} GiB  "
          f"-> {'OK' if mem.argument_size_in_bytes <= budget else 'OVER'}")
    print(f"  per-device temp bytes                {mem.temp_size_in_bytes / 2**30:8.3f} GiB")
    print(f"  per-device TFLOPs per step           {flops / 1e12:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-full", action="store_true", help="compile (not only lower) the full presets")
    parser.add_argument("--train-step", action="store_true", help="AOT-compile the full sharded train step")
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    if not args.skip_table:
        print(f"{'case':<30} {'parameters':>15} {'GFLOPs/fwd':>12} {'CPU ms/fwd':>11}  flops from")
        for preset, label, shape in CASES:
            r = forward_row(preset, label, shape, args.compile_full)
            ms = f"{r['ms']:11.1f}" if r["ms"] is not None else f"{'-':>11}"
            print(f"{r['label']:<30} {r['params']:>15,} {r['gflops']:>12.2f} {ms}  {r['note']}", flush=True)
    if args.train_step:
        train_step_check()


if __name__ == "__main__":
    main()
