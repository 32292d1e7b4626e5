"""CoDi's DDPM noise schedule, forward noising and the prediction-target conversions.

The schedule is T=1000 steps of betas = linspace(sqrt(0.00085), sqrt(0.012), T)^2 (the LDM "linear"
schedule, which is Stable Diffusion's "scaled_linear"). Like the original, every buffer is derived in
float64 on the host and then cast to float32, and the float32 buffers carry the official names (they
sit at the top level of the released CoDi state dict), so `Schedule.buffers()` compares one-to-one.

A `Schedule` holds host numpy constants, not traced arrays: samplers derive their per-step scalars
from it at trace time, and jitted functions close over it (or take it as a static argument; it
hashes by identity). Functions here act on pytrees of latents, one timestep vector t[B] shared by
every leaf, broadcast over each leaf's non-batch dimensions.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

NUM_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012

# Official buffer names, in the order DDPM.register_schedule registers them.
BUFFER_NAMES = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)


def _torch_linspace_f64(start: float, end: float, n: int) -> np.ndarray:
    """float64 linspace rounded exactly as torch.linspace (the original's) rounds it.

    torch fills the first half as fma(i, step, start) and the second half as
    fma(-(n-1-i), step, end); numpy's linspace differs in the last bit for about a quarter of the
    entries. Exact rational arithmetic gives the single rounding an fma does.
    """
    step = (end - start) / (n - 1)
    fs, fe, fstep = Fraction(start), Fraction(end), Fraction(step)
    half = n // 2
    return np.array([float(fs + i * fstep) if i < half else float(fe - (n - 1 - i) * fstep)
                     for i in range(n)], np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete DDPM schedule: float64 host arrays plus their float32 casts under official names."""
    num_timesteps: int
    betas_f64: np.ndarray
    alphas_cumprod_f64: np.ndarray
    buffers_f32: dict

    def __getattr__(self, name: str):
        # Official buffer names read as attributes: schedule.sqrt_alphas_cumprod, ...
        table = self.__dict__.get("buffers_f32", {})
        if name in table:
            return table[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def buffers(self) -> dict[str, np.ndarray]:
        """The float32 buffers under their official state-dict names."""
        return dict(self.buffers_f32)

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float64 sqrt(abar_t), sqrt(1 - abar_t) at integer timesteps (host side, for samplers)."""
        abar = self.alphas_cumprod_f64[np.asarray(t)]
        return np.sqrt(abar), np.sqrt(1.0 - abar)


def make_schedule(num_timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START,
                  linear_end: float = LINEAR_END, v_posterior: float = 0.0) -> Schedule:
    """The DDPM "linear" schedule of LDM/CoDi with every derived buffer of DDPM.register_schedule."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if not 0.0 < linear_start < linear_end < 1.0:
        raise ValueError(f"need 0 < linear_start < linear_end < 1, got {linear_start}, {linear_end}")
    betas = _torch_linspace_f64(linear_start ** 0.5, linear_end ** 0.5, num_timesteps) ** 2
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = ((1 - v_posterior) * betas * (1.0 - abar_prev) / (1.0 - abar)
                          + v_posterior * betas)
    f64 = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
        "posterior_variance": posterior_variance,
        # The posterior variance is 0 at t=0, so its log is clipped.
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }
    return Schedule(num_timesteps=num_timesteps, betas_f64=betas, alphas_cumprod_f64=abar,
                    buffers_f32={name: f64[name].astype(np.float32) for name in BUFFER_NAMES})


def batch_size(tree) -> int:
    """The batch size shared by every leaf; ValueError if the leaves disagree or are scalars."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("the latent pytree has no leaves")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes:
        raise ValueError("every latent needs a leading batch dimension; got a scalar leaf")
    if len(sizes) != 1:
        raise ValueError(f"every latent must share one batch size; got {sorted(sizes)}")
    return sizes.pop()


def _per_example(table: np.ndarray, t: jax.Array, x: jax.Array) -> jax.Array:
    """table[t] shaped [B, 1, ..., 1] to broadcast against x [B, ...]."""
    value = jnp.asarray(table)[t]
    return value.reshape(value.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def q_sample(schedule: Schedule, x0_tree, t: jax.Array, noise_tree):
    """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, leaf by leaf, one t[B]."""
    def one(x0, noise):
        return (_per_example(schedule.sqrt_alphas_cumprod, t, x0) * x0
                + _per_example(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)
    return jax.tree.map(one, x0_tree, noise_tree)


def v_target(schedule: Schedule, x0_tree, t: jax.Array, noise_tree):
    """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    def one(x0, noise):
        return (_per_example(schedule.sqrt_alphas_cumprod, t, x0) * noise
                - _per_example(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)
    return jax.tree.map(one, x0_tree, noise_tree)


def eps_from_v(schedule: Schedule, xt_tree, t: jax.Array, v_tree):
    """Turn a v-prediction into the epsilon the samplers take: eps = sqrt(abar) v + sqrt(1-abar) x_t."""
    def one(xt, v):
        return (_per_example(schedule.sqrt_alphas_cumprod, t, xt) * v
                + _per_example(schedule.sqrt_one_minus_alphas_cumprod, t, xt) * xt)
    return jax.tree.map(one, xt_tree, v_tree)


PREDICTIONS = ("eps", "v")


def eps_from_prediction(schedule: Schedule, xt_tree, t: jax.Array, pred_tree, prediction):
    """The epsilon the samplers take from a model output: itself for "eps", converted for "v". `prediction` is
    one target for every leaf or {top-level key: target} (outputs of UNets trained on different targets)."""
    if isinstance(prediction, Mapping):
        return {k: eps_from_prediction(schedule, xt_tree[k], t, p, prediction[k]) for k, p in pred_tree.items()}
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    return pred_tree if prediction == "eps" else eps_from_v(schedule, xt_tree, t, pred_tree)
