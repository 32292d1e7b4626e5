"""`bridging_align`: CoDi's Bridging Alignment of the prompt encoders, text as the bridge.

For every pair in `config.model.pairs` ("text_audio", "text_video", and for from-scratch small
runs "text_image") whose two modalities are in the batch, the two prompt encodings (CLIP text /
image / video, CLAP audio: each an L2-normalised [B, 1, D]) meet in a symmetric InfoNCE over the
global batch (shard_map all-gather, contrastive.py) with a learnable temperature per pair
(`bridge/params/logit_scale_<pair>`). The loss is the mean over the pairs present.

What trains is `config.model.trainable` (groups, see components.py): the paper keeps CLIP's text
and image towers frozen and trains CLAP and CLIP's temporal layers ("clap:*", "clip:temporal",
"bridge:*"); small from-scratch runs add "clip:text" and "clip:vision".
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.data import pipeline, tokenizers
from codi_jax.eval import probes
from codi_jax.models.catalogue import MODALITIES
from codi_jax.models.networks import Networks
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained, Stage
from codi_jax.train.stages.components import PromptEncoders, has_input, media_shapes, trainable_predicate
from codi_jax.train.stages.contrastive import INIT_LOGIT_SCALE, info_nce


def parse_pair(name: str) -> tuple[str, str]:
    parts = tuple(name.split("_"))
    if len(parts) != 2 or parts[0] == parts[1] or not set(parts) <= set(MODALITIES):
        raise ConfigError(f"unknown pair {name!r}; expected two different modalities of {list(MODALITIES)} "
                          "joined by '_', e.g. 'text_audio'")
    return parts


class BridgingAlignStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        m = config.model
        self.pairs = {name: parse_pair(name) for name in m.pairs}
        if not self.pairs:
            raise ConfigError("config.model.pairs is empty; expected e.g. ('text_audio', 'text_video')")
        used = {mod for pair in self.pairs.values() for mod in pair}
        names = ["clip"] + (["clap"] if "audio" in used else [])
        self.networks = Networks(m, names, dtype=jnp.dtype(config.dtype), remat_policy=config.remat_policy,
                                 attn_impl=config.attn_impl)
        if "text" in used and "clip" not in config.data.preprocess.text.tokenizers:
            raise ConfigError("pairs with text need data.preprocess.text.tokenizers.clip")
        spec = config.data.preprocess.text.tokenizers.get("clip")
        self.encoders = PromptEncoders(self.networks, tokenizers.build_tokenizer("clip", spec.path) if spec else None,
                                       spec.max_length if spec else 0, media_shapes(config.data))
        self._trainable = trainable_predicate(m.trainable)
        covered = set()
        for objective in config.data.objectives.values():
            covered |= {name for name, pair in self.pairs.items() if set(pair) <= set(objective.modalities)}
        if covered != set(self.pairs):
            raise ConfigError(f"no data objective carries both modalities of {sorted(set(self.pairs) - covered)}")

    def init(self, rng):
        variables = self.networks.init(rng)
        scale = lambda: nn.LogicallyPartitioned(jnp.asarray(INIT_LOGIT_SCALE, jnp.float32), names=())
        variables["bridge"] = {"params": {f"logit_scale_{name}": scale() for name in self.pairs}}
        return variables

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

    def dataset(self, *, global_batch_size, process_index, process_count, seed):
        return pipeline.make_dataset(self.config.data, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count, seed=seed)

    def loss(self, params, batch, rng, step):
        present = {name: pair for name, pair in self.pairs.items() if all(has_input(batch, m, "prompt") for m in pair)}
        modalities = sorted({m for pair in present.values() for m in pair})
        keys = dict(zip(modalities, jax.random.split(rng, len(modalities))))
        embeddings = {m: self.encoders.encode(params, m, batch, keys[m]) for m in modalities}
        metrics, total = {}, 0.0
        for name, (a, b) in present.items():
            log_scale = params["bridge"]["params"][f"logit_scale_{name}"]
            loss, accuracy = info_nce(embeddings[a], embeddings[b], log_scale, self.mesh)
            metrics.update({f"{name}/loss": loss, f"{name}/accuracy": accuracy,
                            f"{name}/temperature": jnp.exp(-log_scale)})
            total += loss
        return total / len(present), metrics

    def pretrained(self):
        source = self.config.init_from.get("clip_from", "")
        return [Pretrained(source, "clip", "clip")] if source else []

    def probe_outputs(self, params, batch, rng):
        """{modality: [B, D]} prompt encodings of the probe examples, for every modality of a pair."""
        modalities = sorted({m for pair in self.pairs.values() for m in pair})
        keys = jax.random.split(rng, len(modalities))
        return {m: self.encoders.encode(params, m, batch, k)[:, 0] for m, k in zip(modalities, keys)}

    def probe(self):
        spec = self.probe_spec("retrieval")
        if spec is None:
            return None
        modalities = sorted({m for pair in self.pairs.values() for m in pair})
        batch = pipeline.probe_batch(self.config.data, modalities, spec.num_examples)
        return probes.Probe("retrieval", batch, self.probe_outputs, pairs=tuple(self.pairs.values()))

