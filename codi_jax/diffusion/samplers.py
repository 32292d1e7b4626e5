"""Samplers over pytrees of latents: CoDi's DDIM and DPM-Solver++(2M).

Every modality in the pytree steps together with one shared timestep vector t[B] (int32), as CoDi's
joint generation does. The denoising loop is one `lax.scan` over per-step scalars that are computed on
the host from the schedule, so `sample` traces once per (steps, method, shapes) inside `jax.jit`.

DDIM reproduces `DDIMSampler_VD` of the original: timesteps range(0, T, T // S) + 1 (1, 21, ..., 981 for
S=50; for an S that does not divide T this gives len(range(...)) steps, as the original does), walked
in reverse; the last step goes to alphas_cumprod[0] rather than 1; no x0 clipping; and the per-step
scalars are float32 values derived exactly as the original derives them.

DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) is the fast option. Its timesteps are
integers spaced quadratically in time from t_max (default T-1) down to 0 (see `dpm_timesteps`), so
like DDIM it ends at the noise level of alphas_cumprod[0]; the model is never called at t=0. The
first step is first order (there is no history yet), and so is the last when steps < 15 (the
solver's usual guard for few steps).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.diffusion.schedule import Schedule, batch_size

DenoiseFn = Callable[..., object]
METHODS = ("ddim", "dpmpp_2m")
# Below this many steps DPM-Solver++ takes its last step first order (it is unstable near t=0).
LOWER_ORDER_FINAL_BELOW = 15


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The original's "uniform" DDIM timesteps, ascending: range(0, T, T // steps) + 1."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_timesteps}], got {steps}")
    timesteps = np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int64) + 1
    if timesteps[-1] >= num_timesteps:
        raise ValueError(f"DDIM with {steps} steps would reach timestep {timesteps[-1]} >= "
                         f"T={num_timesteps}; T // steps divides T - 1, pick other steps")
    return timesteps


def ddim_parameters(schedule: Schedule, steps: int, eta: float = 0.0) -> dict[str, np.ndarray]:
    """DDIM per-step arrays as the original makes them, in ascending timestep order.

    timesteps int64; alphas float32 = alphas_cumprod[t]; alphas_prev float64 holding float32 values,
    alphas_cumprod[0] for the first (i.e. the last sampling) step; sigmas float64; and
    sqrt_one_minus_alphas float32.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    abar = schedule.alphas_cumprod
    alphas = abar[timesteps]
    alphas_prev = np.concatenate([abar[:1], abar[timesteps[:-1]]]).astype(np.float64)
    # The original divides a float64 numpy array by a float32 tensor, which torch evaluates as the
    # float32 reciprocal times the float64 numerator.
    recip = (np.float32(1) / (np.float32(1) - alphas)).astype(np.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev) * recip * (1 - alphas.astype(np.float64) / alphas_prev))
    return {
        "timesteps": timesteps,
        "alphas": alphas,
        "alphas_prev": alphas_prev,
        "sigmas": sigmas,
        "sqrt_one_minus_alphas": np.sqrt(np.float32(1) - alphas),
    }


def dpm_timesteps(num_timesteps: int, steps: int, t_max: int | None = None) -> np.ndarray:
    """DPM-Solver++ grid, descending: steps + 1 distinct integers from t_max to 0, quadratic in time.

    t_i = round((sqrt(t_max) (1 - i / steps))^2), the "quadratic" spacing of the DDIM paper: time-
    uniform steps leave one large logSNR jump at the end (t ~ T/steps -> 0), while this keeps the
    logSNR steps roughly even. Where rounding would repeat a timestep (more than ~sqrt(t_max) / 0.7
    steps) the tail becomes unit steps.
    """
    t_max = num_timesteps - 1 if t_max is None else int(t_max)
    if not 0 < t_max < num_timesteps:
        raise ValueError(f"t_max must be in [1, {num_timesteps - 1}], got {t_max}")
    if not 1 <= steps <= t_max:
        raise ValueError(f"DPM-Solver++ steps must be in [1, t_max={t_max}], got {steps}")
    grid = np.round(np.linspace(np.sqrt(t_max), 0.0, steps + 1) ** 2).astype(np.int64)
    for i in range(steps - 1, -1, -1):
        grid[i] = max(grid[i], grid[i + 1] + 1)
    return grid


def _ddim_scan_inputs(schedule: Schedule, steps: int, eta: float) -> dict[str, np.ndarray]:
    p = ddim_parameters(schedule, steps, eta)
    a, a_prev, sigma = p["alphas"], p["alphas_prev"].astype(np.float32), p["sigmas"].astype(np.float32)
    per_step = {
        "t": p["timesteps"].astype(np.int32),
        "sqrt_one_minus_a": p["sqrt_one_minus_alphas"],
        "sqrt_a": np.sqrt(a),
        "sqrt_a_prev": np.sqrt(a_prev),
        "dir_coef": np.sqrt(np.float32(1) - a_prev - sigma ** 2),
        "sigma": sigma,
    }
    # Sampling walks the timesteps from the noisiest down.
    return {k: v[::-1].copy() for k, v in per_step.items()}


def _dpm_scan_inputs(schedule: Schedule, steps: int, t_max: int | None) -> dict[str, np.ndarray]:
    grid = dpm_timesteps(schedule.num_timesteps, steps, t_max)
    alpha, sigma = schedule.alpha_sigma(grid)
    lam = np.log(alpha) - np.log(sigma)
    h = lam[1:] - lam[:-1]
    second_order = np.arange(steps) > 0
    if steps < LOWER_ORDER_FINAL_BELOW:
        second_order[-1] = False
    # D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}, with r_i = h_{i-1} / h_i.
    half_inv_r = np.concatenate([[0.0], 0.5 * h[1:] / h[:-1]])
    w_cur = np.where(second_order, 1.0 + half_inv_r, 1.0)
    w_prev = np.where(second_order, -half_inv_r, 0.0)
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return {
        "t": grid[:-1].astype(np.int32),
        "alpha": f32(alpha[:-1]),
        "sigma": f32(sigma[:-1]),
        "c_x": f32(sigma[1:] / sigma[:-1]),
        "c_d": f32(-alpha[1:] * np.expm1(-h)),
        "w_cur": f32(w_cur),
        "w_prev": f32(w_prev),
    }


def sample(denoise_fn: DenoiseFn, x_T_tree, *, schedule: Schedule, method: str = "ddim", steps: int,
           eta: float = 0.0, rng: jax.Array | None = None, return_trajectory: bool = False,
           t_max: int | None = None):
    """Run the reverse process from x_T_tree; denoise_fn(x_tree, t[B] int32) -> eps_tree.

    Returns the final latents (same tree, shapes and dtypes as x_T_tree); with return_trajectory,
    also {"x": every step's output, "x0": every step's data prediction (trees with a leading [S]
    axis, in sampling order), "t": int32[S] the timestep of each model call}.
    eta (DDIM only) scales the fresh noise of each step and then needs rng; t_max (DPM-Solver++ only)
    is the noise level x_T is taken to be at.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler method {method!r}; expected one of {METHODS}")
    b = batch_size(x_T_tree)
    if method == "ddim":
        if t_max is not None:
            raise ValueError("t_max applies to dpmpp_2m only; DDIM's first timestep follows from steps")
        if eta > 0 and rng is None:
            raise ValueError(f"DDIM with eta={eta} > 0 draws noise and needs rng")
        xs = _ddim_scan_inputs(schedule, steps, eta)
        stochastic = eta > 0
        if stochastic:
            xs["rng"] = jax.random.split(rng, len(xs["t"]))
        step = _ddim_step(denoise_fn, b, stochastic)
        carry = x_T_tree
    else:
        if eta != 0:
            raise ValueError(f"eta applies to DDIM only; dpmpp_2m is deterministic (got eta={eta})")
        xs = _dpm_scan_inputs(schedule, steps, t_max)
        step = _dpm_step(denoise_fn, b)
        carry = (x_T_tree, jax.tree.map(jnp.zeros_like, x_T_tree))
    carry, trajectory = jax.lax.scan(step, carry, xs)
    x = carry if method == "ddim" else carry[0]
    if not return_trajectory:
        return x
    return x, {"x": trajectory["x"], "x0": trajectory["x0"], "t": jnp.asarray(xs["t"])}


def _ddim_step(denoise_fn: DenoiseFn, b: int, stochastic: bool):
    def step(x_tree, s):
        eps_tree = denoise_fn(x_tree, jnp.full((b,), s["t"], jnp.int32))
        leaves, treedef = jax.tree.flatten(x_tree)
        eps_leaves = treedef.flatten_up_to(eps_tree)
        noise_keys = jax.random.split(s["rng"], len(leaves)) if stochastic else [None] * len(leaves)
        new, x0s = [], []
        for x, eps, key in zip(leaves, eps_leaves, noise_keys):
            xf, ef = x.astype(jnp.float32), eps.astype(jnp.float32)
            x0 = (xf - s["sqrt_one_minus_a"] * ef) / s["sqrt_a"]
            x_prev = s["sqrt_a_prev"] * x0 + s["dir_coef"] * ef
            if stochastic:
                x_prev = x_prev + s["sigma"] * jax.random.normal(key, x.shape, jnp.float32)
            new.append(x_prev.astype(x.dtype))
            x0s.append(x0.astype(x.dtype))
        out = jax.tree.unflatten(treedef, new)
        return out, {"x": out, "x0": jax.tree.unflatten(treedef, x0s)}
    return step


def _dpm_step(denoise_fn: DenoiseFn, b: int):
    def step(carry, s):
        x_tree, x0_prev_tree = carry
        eps_tree = denoise_fn(x_tree, jnp.full((b,), s["t"], jnp.int32))

        def data_prediction(x, eps):
            return ((x.astype(jnp.float32) - s["sigma"] * eps.astype(jnp.float32)) / s["alpha"])

        x0_tree = jax.tree.map(data_prediction, x_tree, eps_tree)

        def update(x, x0, x0_prev):
            d = s["w_cur"] * x0 + s["w_prev"] * x0_prev.astype(jnp.float32)
            return (s["c_x"] * x.astype(jnp.float32) + s["c_d"] * d).astype(x.dtype)

        out = jax.tree.map(update, x_tree, x0_tree, x0_prev_tree)
        x0_tree = jax.tree.map(lambda v, x: v.astype(x.dtype), x0_tree, x_tree)
        return (out, x0_tree), {"x": out, "x0": x0_tree}
    return step
