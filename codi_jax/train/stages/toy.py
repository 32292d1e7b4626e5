"""`toy`: a small MLP denoiser on synthetic images, the test bed of the trainer itself.

It exercises everything a real stage does (a frozen "pretrained" encoder next to a
trainable denoiser, logical axis names, bf16 compute, remat, samples) at a size that
compiles and steps in milliseconds on CPU, without depending on any other package module.
Objective: x_noisy = x + sigma * eps with sigma ~ U(0.05, 1); predict eps; MSE.
Data: one coloured square on black per example, drawn from (seed, global example index),
so the global batch is the same whatever the number of hosts.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.parallel.partitioning import dense_init
from codi_jax.train import freeze
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Stage, require_choice

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


class _Block(nn.Module):
    width: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, emb):
        y = nn.LayerNorm(dtype=self.dtype, scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))(h)
        y = nn.Dense(2 * self.width, dtype=self.dtype, kernel_init=dense_init(axes=("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(y + emb)
        y = nn.Dense(self.width, dtype=self.dtype, kernel_init=dense_init(axes=("mlp", "embed")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(nn.gelu(y))
        return h + y


class ToyDenoiser(nn.Module):
    """encoder (frozen by default) -> depth x residual MLP blocks with a noise-level embedding -> eps."""
    width: int = 64
    depth: int = 2
    dtype: jnp.dtype = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x, sigma):
        b = x.shape[0]
        flat = x.reshape(b, -1)
        h = nn.Dense(self.width, dtype=self.dtype, name="encoder",
                     kernel_init=dense_init(axes=("mlp", "embed")))(flat)
        freqs = jnp.exp(-jnp.log(1e4) * jnp.arange(self.width // 2) / (self.width // 2))
        angles = sigma[:, None] * 1e3 * freqs[None]
        emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1).astype(self.dtype)
        block = _Block if self.remat_policy == "none" else nn.remat(_Block, policy=REMAT_POLICIES[self.remat_policy])
        emb = nn.Dense(self.width, dtype=self.dtype, name="time", kernel_init=dense_init(axes=("embed", "mlp")))(emb)
        for i in range(self.depth):
            h = block(self.width, self.dtype, name=f"block_{i}")(h, emb)
        out = nn.Dense(flat.shape[-1], dtype=self.dtype, name="out", kernel_init=dense_init(axes=("embed", "mlp")))(h)
        return out.reshape(x.shape).astype(jnp.float32)


def _draw(seed: int, index: int, resolution: int) -> np.ndarray:
    rng = np.random.default_rng((seed, index))
    side = max(resolution // 2, 1)
    top, left = rng.integers(0, resolution - side + 1, size=2)
    image = np.full((resolution, resolution, 3), -1.0, np.float32)
    image[top:top + side, left:left + side] = rng.uniform(-0.5, 1.0, size=3).astype(np.float32)
    return image


class SyntheticImages:
    """Deterministic image batches; the state is the number of batches already produced."""

    def __init__(self, *, resolution: int, global_batch_size: int, process_index: int, process_count: int,
                 seed: int):
        if global_batch_size % process_count:
            raise ConfigError(f"batch_size {global_batch_size} does not split over {process_count} processes")
        self.resolution, self.seed = resolution, seed
        self.global_batch = global_batch_size
        self.per_host = global_batch_size // process_count
        self.offset = process_index * self.per_host
        self.batches = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        first = self.batches * self.global_batch + self.offset
        self.batches += 1
        images = np.stack([_draw(self.seed, first + i, self.resolution) for i in range(self.per_host)])
        return {"image": images}

    def get_state(self) -> dict:
        return {"batches": self.batches}

    def set_state(self, state: dict) -> None:
        self.batches = int(state["batches"])


class ToyStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        m = config.model
        require_choice(config.remat_policy, REMAT_POLICIES, "remat_policy")
        self.model = ToyDenoiser(width=m.width, depth=m.depth, dtype=jnp.dtype(config.dtype),
                                 remat_policy=config.remat_policy)
        self._trainable = freeze.regex_predicate(m.trainable)

    def _example(self, batch_size):
        r = self.config.model.resolution
        return jnp.zeros((batch_size, r, r, 3)), jnp.zeros((batch_size,))

    def init(self, rng):
        return self.model.init(rng, *self._example(1))["params"]

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

    def loss(self, params, batch, rng, step):
        x = batch["image"]
        k_sigma, k_eps = jax.random.split(rng)
        sigma = jax.random.uniform(k_sigma, (x.shape[0],), minval=0.05, maxval=1.0)
        eps = jax.random.normal(k_eps, x.shape)
        pred = self.model.apply({"params": params}, x + sigma[:, None, None, None] * eps, sigma)
        mse = jnp.mean((pred - eps) ** 2)
        return mse, {"mse": mse}

    def dataset(self, *, global_batch_size, process_index, process_count, seed):
        return SyntheticImages(resolution=self.config.model.resolution, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count, seed=seed)

    def samples(self, params, batch, rng):
        x = batch["image"][:4]
        sigma = jnp.full((x.shape[0],), 0.5)
        noisy = x + 0.5 * jax.random.normal(rng, x.shape)
        denoised = noisy - 0.5 * self.model.apply({"params": params}, noisy, sigma)
        to_unit = lambda a: jnp.clip((a + 1.0) / 2.0, 0.0, 1.0)
        return {"images": {"clean": to_unit(x), "noisy": to_unit(noisy), "denoised": to_unit(denoised)}}

