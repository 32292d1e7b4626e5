"""Golden runner for CoDi's DDPM schedule and DDIM sampler (`DDPM.register_schedule`, `DDIMSampler_VD`).

The schedule has no learned weights: its official buffers are constants that
`codi_jax.diffusion.schedule` recomputes, so this component has no converter or manifest prefix. The
runner checks the schedule buffers (float32, and the float64 references), the DDIM per-step arrays of
every `ddim<S>_eta<E>` case, and every `traj<N>` trajectory, sampled with our `cfg_denoiser` + `sample`
around the fixture's toy eps-model, which runs on the host from inside the compiled loop: that
records the model inputs and outputs our sampler really produced.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from codi_jax.convert import registry
from codi_jax.diffusion import guidance, samplers, schedule as schedule_lib

_DDIM_CASE = re.compile(r"^ddim(\d+)_eta([0-9.]+)\.(\w+)$")
_TRAJ = re.compile(r"^traj(\d+)\.(\w+)$")


def build_schedule(config: dict) -> schedule_lib.Schedule:
    args = config["schedule_constructor"]["DDPM_args"]
    if args.get("beta_schedule", "linear") != "linear":
        raise ValueError(f"beta_schedule {args['beta_schedule']!r} is not supported; expected 'linear'")
    if args.get("parameterization", "eps") != "eps":
        raise ValueError(f"parameterization {args['parameterization']!r} is not supported; expected 'eps'")
    return schedule_lib.make_schedule(int(args["timesteps"]), float(args["beta_linear_start"]),
                                      float(args["beta_linear_end"]), float(args.get("v_posterior", 0.0)))


def _channels_last(x: np.ndarray, lead: int = 0) -> np.ndarray:
    """PyTorch [(S,) B, C, ...] -> ours [(S,) B, ..., C]; [B, D] latents have no channel axis."""
    return np.moveaxis(x, lead + 1, -1) if x.ndim >= lead + 3 else x


def _channels_first(x, lead: int = 0) -> np.ndarray:
    x = np.asarray(x)
    return np.moveaxis(x, -1, lead + 1) if x.ndim >= lead + 3 else x


def toy_eps_model(mix: list[float]):
    """The fixture's toy on the host, numpy float32 op for op as defined there:
    eps_i = (0.1 x_i + t / 1000) + 0.1 s, s[b] = sum_d of the mix-weighted condition [b, 0, d].

    Evaluating it in numpy keeps XLA's rewrites (fused multiply-adds, division by a broadcast
    scalar as a reciprocal multiply) out of the toy, so only our sampler's arithmetic is compared.
    """
    weights = [np.float32(w / float(sum(mix))) for w in mix]

    def model(x_tree, t, context):
        ctx = sum(w * np.asarray(c) for w, c in zip(weights, context))
        s = np.float32(0.1) * ctx[:, 0, :].sum(-1)
        tf = np.asarray(t).astype(np.float32) / np.float32(1000)

        def one(x):
            x = np.asarray(x)
            bcast = (x.shape[0],) + (1,) * (x.ndim - 1)
            return (np.float32(0.1) * x + tf.reshape(bcast)) + s.reshape(bcast)
        return {k: one(x) for k, x in x_tree.items()}
    return model


def recording_model(host_model, calls: list):
    """A model_fn for `cfg_denoiser` that runs host_model from inside the compiled loop and appends
    each call's (inputs, t, outputs) to calls, in call order."""
    def host(x_tree, t, context):
        out = host_model(x_tree, t, context)
        calls.append((jax.tree.map(np.asarray, x_tree), np.asarray(t), out))
        return out

    def model(x_tree, t, context):
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), x_tree)
        return io_callback(host, shapes, x_tree, t, context, ordered=True)
    return model


def _schedule_outputs(sched, params, io) -> dict:
    results = {name: (sched.buffers()[name], ref) for name, ref in params.items()}
    for name, ours in (("betas_f64", sched.betas_f64), ("alphas_cumprod_f64", sched.alphas_cumprod_f64)):
        if f"schedule.{name}" in io:
            results[f"schedule.{name}"] = (ours, io[f"schedule.{name}"])
    cases = {}
    for key in io:
        m = _DDIM_CASE.match(key)
        if m:
            cases[(int(m.group(1)), m.group(2))] = f"ddim{m.group(1)}_eta{m.group(2)}"
    for (steps, eta), prefix in sorted(cases.items()):
        ours = samplers.ddim_parameters(sched, steps, float(eta))
        for name, value in ours.items():
            if f"{prefix}.{name}" in io:
                results[f"{prefix}.{name}"] = (value, io[f"{prefix}.{name}"])
    return results


def _trajectory_outputs(sched, config, meta, io) -> dict:
    args = config["sampler"]["sample_args"]
    if float(args.get("eta", 0.0)) != 0.0:
        raise ValueError(f"trajectories need eta=0 (the original's noise cannot be reproduced); "
                         f"got {args['eta']}")
    xtypes = list(args["xtype"])
    ctypes = list(args["condition_types"])
    mix = [float(args.get("mix_weight", {}).get(c, 1.0)) for c in ctypes]
    scale = float(args["unconditional_guidance_scale"])
    cond = [jnp.asarray(io[f"traj.condition_{c}.cond"]) for c in ctypes]
    uncond = [jnp.asarray(io[f"traj.condition_{c}.uncond"]) for c in ctypes]
    x_T = {m: jnp.asarray(_channels_last(io[f"traj.x_T_{m}"])) for m in xtypes}
    runs = sorted({int(m.group(1)) for m in map(_TRAJ.match, io) if m})
    results = {}
    for run in runs:
        steps = int(meta.get("steps", {}).get(f"traj{run}", run))
        calls = []
        denoise = guidance.cfg_denoiser(recording_model(toy_eps_model(mix), calls), cond, uncond, scale)
        x, traj = jax.jit(lambda x0: samplers.sample(denoise, x0, schedule=sched, method="ddim",
                                                     steps=steps, return_trajectory=True))(x_T)
        jax.effects_barrier()
        ours = {"model_t": np.stack([c[1] for c in calls])}
        for m in xtypes:
            ours[f"x0_final_{m}"] = _channels_first(x[m])
            ours[f"pred_xt_{m}"] = _channels_first(traj["x"][m], lead=1)
            ours[f"pred_x0_{m}"] = _channels_first(traj["x0"][m], lead=1)
            ours[f"model_in_{m}"] = _channels_first(np.stack([c[0][m] for c in calls]), lead=1)
            ours[f"model_out_{m}"] = _channels_first(np.stack([c[2][m] for c in calls]), lead=1)
        for name, value in ours.items():
            key = f"traj{run}.{name}"
            if key in io:
                results[key] = (np.asarray(value), io[key])
    return results


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    sched = build_schedule(config)
    return {**_schedule_outputs(sched, params, io), **_trajectory_outputs(sched, config, meta, io)}


registry.register(registry.Component(name="ddim", run_golden=run_golden))
