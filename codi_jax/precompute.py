"""Cached encodings: run the frozen autoencoders and prompt encoders once over a dataset.

    python -m codi_jax.precompute --config configs/precompute.py:cpu --workdir workdirs/encodings \\
        --config.init_from.autoencoders=workdirs/autoencoders --config.init_from.bridging_align=workdirs/bridging_align

writes, for every split in `config.splits`, each example's autoencoder posteriors (mean and standard deviation,
unscaled) and prompt encodings into WORKDIR (codi_jax.data.encodings). The ldm and latent_align stages read
it as their data (`data.objectives.<name>.dataset = "encoded"`, `path = WORKDIR`), which takes the encoders
out of the training step: training on the cache equals training with on-the-fly encoding (the cached
posterior is sampled with the same noise), only faster. This is also how the diffusers train at scale.

The batch is sharded over the mesh's data axes; each process encodes and writes a contiguous block of every
split. A split already complete in WORKDIR for the same settings is kept (the job resumes split by split);
a split is written under temporary names and appears only when finished.
"""
from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from codi_jax import checkpoints
from codi_jax.data import encodings, pipeline, tokenizers
from codi_jax.models.catalogue import LATENT_CODER_OF, NETWORKS, PROMPT_ENCODER_OF
from codi_jax.parallel import mesh as mesh_lib
from codi_jax.train import freeze
from codi_jax.train.errors import ConfigError
from codi_jax.models.networks import Networks
from codi_jax.train.stages.components import LatentCoders, PromptEncoders, media_shapes


def _networks(config) -> tuple[Networks, tuple[str, ...]]:
    names = sorted({LATENT_CODER_OF[m] for m in config.latents} | {PROMPT_ENCODER_OF[m] for m in config.embeddings})
    return Networks(config.model, names, dtype=jnp.dtype(config.dtype), remat_policy="none"), tuple(names)


def load_params(config, networks: Networks, names, rng) -> tuple[dict, dict[str, str]]:
    """{component: variables} from the init_from workdirs (EMA where kept); random where none is given
    (tests, smoke runs). Also {component: source} for the metadata."""
    params, sources, restored = {}, {}, {}
    random = jax.jit(networks.init)(rng)
    for name in names:
        workdir = config.init_from.get(NETWORKS[name].stage, "")
        if not workdir:
            params[name], sources[name] = nn.meta.unbox(random[name]), "random"
            continue
        if workdir not in restored:  # several networks come from one workdir: read it once
            restored[workdir] = checkpoints.restore_params(workdir, config.init_from_ema)
        step, flat = restored[workdir]
        head = name + freeze.SEP
        branch = {k[len(head):]: v for k, v in flat.items() if k.startswith(head)}
        if not branch:
            raise ConfigError(f"init_from.{NETWORKS[name].stage}: {workdir} (step {step}) holds no {name}")
        params[name], sources[name] = freeze.unflatten(branch), f"{workdir} step {step}"
    return params, sources


def encode_fn(config, networks: Networks):
    """(params, batch) -> {cache field: [B, ...]}: posteriors of `config.latents`, encodings of `config.embeddings`."""
    specs = config.data.preprocess.text.tokenizers
    clip_tok = tokenizers.build_tokenizer("clip", specs.clip.path) if "clip" in specs else None
    prompts = PromptEncoders(networks, clip_tok, specs.clip.max_length if clip_tok else 0, media_shapes(config.data))
    coders = LatentCoders(networks, config.model.audio_frames)

    def encode(params, batch):
        out = {}
        for m in config.latents:
            mean, std = coders.posterior(params, m, batch)
            out[f"latent/{m}"] = mean
            if std is not None:
                out[f"latent_std/{m}"] = std
        for m in config.embeddings:
            # CLAP draws a crop only for audio longer than its clip; a fixed key keeps the cache deterministic.
            out[f"embedding/{m}"] = prompts.encode(params, m, batch, jax.random.key(0))[:, 0]
        return out

    return encode


def _block(count: int, process_index: int, process_count: int) -> range:
    """This process's contiguous share of range(count)."""
    bounds = np.linspace(0, count, process_count + 1).round().astype(int)
    return range(bounds[process_index], bounds[process_index + 1])


def _settings(config) -> dict:
    """What makes two caches interchangeable (a finished split with other settings is written again)."""
    return {"latents": list(config.latents), "embeddings": list(config.embeddings), "data": config.data.to_dict(),
            "model": config.model.to_dict(), "init_from": config.init_from.to_dict()}


def precompute(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the cache; returns its metadata."""
    mesh = mesh_lib.make_mesh(config.mesh.to_dict())
    networks, names = _networks(config)
    params, sources = load_params(config, networks, names, jax.random.key(config.seed))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    encode = jax.jit(encode_fn(config, networks))
    pi, pc = jax.process_index(), jax.process_count()
    per_host = config.batch_size // pc
    settings = _settings(config)
    try:
        metadata = encodings.read_metadata(workdir)
    except encodings.CacheError:
        metadata = {}
    if metadata.get("settings") != json.loads(json.dumps(settings)):
        metadata = {"settings": settings, "splits": {}, "shapes": {}, "latent_rms": {}}
    metadata["sources"] = sources
    objective = config.data.objectives[sorted(config.data.objectives)[0]]
    text_tokenizers = {n: tokenizers.build_tokenizer(s.kind, s.path) for n, s in config.data.preprocess.text.tokenizers.items()}
    for split, count in config.splits.items():
        if metadata["splits"].get(split) == count:
            logging.info("split %s: %d examples already encoded, kept", split, count)
            continue
        if pi == 0:
            encodings.remove_split(workdir, split)
        multihost_utils.sync_global_devices(f"precompute {split}: old files removed")
        split_objective = ml_collections.ConfigDict(dict(objective.to_dict(), split=split))
        _, load = pipeline.example_loader("encode", split_objective, config.data, text_tokenizers, pc)
        indices = _block(count, pi, pc)
        writer, sums = None, {}
        for start in range(indices.start, indices.stop, per_host):
            rows = [load(i) for i in range(start, min(start + per_host, indices.stop))]
            n = len(rows)
            rows += [rows[-1]] * (per_host - n)  # pad the last batch: one compiled shape
            batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            encoded = jax.device_get(encode(params, mesh_lib.shard_host_batch(batch, mesh)))
            if writer is None:
                shapes = {k: list(v.shape[1:]) for k, v in encoded.items()}
                writer = encodings.ShardWriter(workdir, split, shapes, pi, pc)
            for i in range(n):
                writer.write({**{k: v[i] for k, v in encoded.items()},
                              **{k: batch[k][i] for k in encodings.INT_FIELDS}})
            for m in config.latents:
                mean = encoded[f"latent/{m}"][:n].astype(np.float64)
                std = encoded.get(f"latent_std/{m}", np.zeros_like(mean))[:n].astype(np.float64)
                total, squares, elements = sums.get(m, (0.0, 0.0, 0))
                sums[m] = (total + mean.sum(), squares + (mean ** 2 + std ** 2).sum(), elements + mean.size)
            logging.info("split %s: %d / %d encoded", split, start + n - indices.start, len(indices))
        writer.close()
        multihost_utils.sync_global_devices(f"precompute {split}: written")
        metadata["shapes"] = shapes
        metadata["splits"][split] = count
        if split == "train":
            # The rms of posterior samples (this process's block): 1 / rms is the latent scale that gives the
            # diffusers unit-variance latents.
            metadata["latent_rms"] = {m: float(np.sqrt(sq / el)) for m, (_, sq, el) in sums.items()}
        if pi == 0:
            encodings.write_metadata(workdir, metadata)
    return metadata


_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/precompute.py[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "Cache directory (default: config.workdir).")


def main(argv):
    if len(argv) > 1:
        print(f"codi_jax.precompute: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    if _CONFIG.value is None:
        print("codi_jax.precompute: --config is required, e.g. --config configs/precompute.py:cpu", file=sys.stderr)
        sys.exit(2)
    try:
        metadata = precompute(_CONFIG.value, _WORKDIR.value or _CONFIG.value.workdir)
    except (ConfigError, encodings.CacheError, ValueError) as err:
        print(f"codi_jax.precompute: {err}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"splits": metadata["splits"], "latent_rms": metadata["latent_rms"]}))


if __name__ == "__main__":
    app.run(main)
