"""Sampling time against steps x one compiled denoiser call, for one output and for joint outputs.

    python benchmarks/bench_sample.py                              # tiny random networks, CPU
    python benchmarks/bench_sample.py --config configs/sample.py:full --steps 10,50 --repeats 2   # on an accelerator

For each output set, after a warm-up call (compilation excluded):
  denoiser  one compiled call of the guided denoiser (the CoDi forward on [uncond, cond], batch 2B, plus
            the guidance combination): the unit of work of every sampling step;
  sample    the compiled `sampling.compiled.sample` (the whole DDIM loop under one jit) with S steps;
  overhead  sample / (S x denoiser) - 1: what the loop adds to the model calls (per-step scalars, the
            update rule, carrying the latents);
  joint x   the joint denoiser's time over the sum of the single-output denoisers' (what the environment
            encoders and joint cross-attention cost compared with generating each output alone).
Weights are random (`from_config(random_init=True)`): timing does not depend on their values.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax import sampling
from codi_jax.diffusion.guidance import cfg_denoiser
from codi_jax.sample import load_config

OUTPUT_SETS = (("image",), ("audio",), ("text",), ("video",), ("image", "audio"), ("video", "audio"),
               ("text", "image"), ("image", "text", "audio"))


def _best(fn, repeats: int) -> float:
    fn()  # compile (and warm caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(pipe: sampling.CoDiPipeline, outputs, steps_list, batch: int, repeats: int) -> tuple[float, list]:
    key = jax.random.key(0)
    x = {m: jax.random.normal(jax.random.fold_in(key, i), (batch,) + pipe.latent_shapes[m])
         for i, m in enumerate(outputs)}
    width = pipe.nets.clip.projection_dim
    cond = jax.random.normal(jax.random.fold_in(key, 10), (batch, 1, width))
    uncond = jax.random.normal(jax.random.fold_in(key, 11), (batch, 1, width))
    scales = {m: jnp.full((batch,) + (1,) * len(pipe.latent_shapes[m]), 7.5) for m in outputs}
    t = jnp.full((batch,), 501, jnp.int32)
    model, wiring, aliased = pipe.nets.codi, pipe.wiring, pipe.aliased_skip

    @jax.jit
    def denoise(variables, x, t, cond, uncond):
        def model_fn(latents, t, context):
            return model.apply(variables, latents, t, context, wiring=wiring, aliased_skip=aliased)
        return cfg_denoiser(model_fn, cond, uncond, scales)(x, t)

    one_call = _best(lambda: jax.block_until_ready(denoise(pipe.codi_variables, x, t, cond, uncond)), repeats)
    rows = []
    for steps in steps_list:
        run = lambda: jax.block_until_ready(sampling.compiled.sample(  # noqa: E731
            pipe.codi_variables, x, cond, uncond, scales, model=model, wiring=wiring, aliased_skip=aliased,
            method="ddim", steps=steps))
        sampled = _best(run, repeats)
        rows.append((steps, sampled, steps * one_call, sampled / (steps * one_call) - 1))
    return one_call, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/sample.py:tiny")
    p.add_argument("--steps", default="5,20", help="comma-separated step counts")
    p.add_argument("--batch", type=int, default=1, help="requests per call (the denoiser sees 2x: CFG)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the best is reported")
    p.add_argument("--outputs", default=";".join(",".join(o) for o in OUTPUT_SETS),
                   help="output sets separated by ';', e.g. 'image;image,audio'")
    args = p.parse_args(argv)
    steps_list = [int(s) for s in args.steps.split(",")]
    output_sets = [tuple(o.split(",")) for o in args.outputs.split(";")]
    pipe = sampling.CoDiPipeline.from_config(load_config(args.config), random_init=True)
    print(f"config {args.config}, devices {jax.devices()}, batch {args.batch}, wiring {pipe.wiring}, "
          f"best of {args.repeats} after a warm-up")
    print(f"{'outputs':<20} {'denoiser ms':>11} {'joint x':>8} {'steps':>6} {'sample ms':>10} "
          f"{'steps x denoiser ms':>20} {'overhead':>9}")
    singles = {}
    for outputs in output_sets:
        one_call, rows = bench(pipe, outputs, steps_list, args.batch, args.repeats)
        if len(outputs) == 1:
            singles[outputs[0]] = one_call
        parts = [singles.get(m) for m in outputs]
        ratio = one_call / sum(parts) if len(outputs) > 1 and None not in parts else np.nan
        for steps, sampled, expected, overhead in rows:
            print(f"{'+'.join(outputs):<20} {one_call * 1e3:>11.1f} {ratio:>8.2f} {steps:>6} {sampled * 1e3:>10.1f} "
                  f"{expected * 1e3:>20.1f} {overhead:>+9.1%}")


if __name__ == "__main__":
    main()
