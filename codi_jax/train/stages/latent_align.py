"""`latent_align`: CoDi stage 2, the environment encoders V and the joint cross-attention.

The diffusion UNets are frozen (only `config.model.trainable` trains; default: the "env" and
"joint" groups of every UNet the objectives use). Each objective is a pair of modalities A_B
("text_image", "text_audio", "audio_video": the paper's chain) drawn from its data objective. On
a batch of pair (A, B) the frozen autoencoders give x0_A, x0_B; one timestep t and fresh noise
give z_t^A, z_t^B; the CoDi model runs both UNets jointly with their connectors reading the
environment encodings (`model.wiring`: "others" = the paper, A attends to V_B(z_t^B); "own" =
the released code), and the loss is L_A + L_B (each the eps-MSE of its modality, as CoDi's
p_losses computes it, times the number of modalities). Optionally (`model.contrastive_weight`)
the paper's contrastive term aligns V_A(z_t^A) with V_B(z_t^B) over the global batch, with time-shifted
hard negatives for audio_video when `model.shift_negatives` > 0 (ours, not the paper's: see env_contrastive).

The prompt context is the null condition (CLIP of "") unless `model.conditions` names condition
modalities present in the batch; those are then used with `model.cond_dropout` as in the ldm stage.
To follow the paper's order, run the chain as successive runs with model.trainable restricted to
the new modality's groups (e.g. text_audio with ("unet_audio:env", "unet_audio:joint")).
Pretrained parts (config.init_from): autoencoders, bridging_align, image_ldm / video_ldm
(unet_image; video_ldm wins), audio_ldm, text_ldm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from codi_jax.data import pipeline, tokenizers
from codi_jax.diffusion.loss import diffusion_loss, draw_t_and_noise
from codi_jax.diffusion.schedule import PREDICTIONS, eps_from_prediction, make_schedule, q_sample
from codi_jax.eval import probes
from codi_jax.models import codi
from codi_jax.models.catalogue import LATENT_CODER_OF, PROMPT_ENCODER_OF, UNET_OF
from codi_jax.models.networks import Networks
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained, Stage, require_choice
from codi_jax.train.stages.bridging_align import parse_pair
from codi_jax.train.stages.components import (LatentCoders, PromptEncoders, has_input, media_shapes,
                                              with_measured_scales, trainable_predicate)
from codi_jax.train.stages.contrastive import INIT_LOGIT_SCALE, info_nce
from codi_jax.train.stages.ldm import Conditioning, check_conditions, guided_sample


# Modalities whose latents have time on axis 1 (video frames, audio mel frames).
TIMED = ("video", "audio")
# Timesteps at which the joint probe reads what V carries (clean, and half-way through the schedule).
ENV_TIMESTEPS = (0, 500)
MIN_SHIFT = 0.1  # of the clip: shorter shifts round to nothing on short latent time axes


def random_shift_fractions(rng, n: int, max_shift: float) -> jax.Array:
    """[n] signed time shifts as fractions of a clip, |s| uniform in [min(MIN_SHIFT, max_shift), max_shift] (never
    beyond the configured maximum), either sign."""
    k_size, k_sign = jax.random.split(rng)
    size = jax.random.uniform(k_size, (n,), minval=min(MIN_SHIFT, max_shift), maxval=max_shift)
    return jnp.where(jax.random.bernoulli(k_sign, 0.5, (n,)), size, -size)


def time_shifted(x: jax.Array, fraction: jax.Array) -> jax.Array:
    """x [B, T, ...] with row i moved later in time by fraction[i] of T positions (earlier when negative), at
    least one position, the edge position repeated into the gap: a clip that starts or ends the same way but
    whose events happen at other times (onset before silence or background stays natural)."""
    length = x.shape[1]
    steps = jnp.round(fraction * length).astype(jnp.int32)
    steps = jnp.where(steps == 0, jnp.sign(fraction).astype(jnp.int32), steps)
    index = jnp.clip(jnp.arange(length)[None, :] - steps[:, None], 0, length - 1)
    return jax.vmap(lambda row, i: row[i])(x, index)


class LatentAlignStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        m = config.model
        self.pairs = {name: parse_pair(name) for name in m.objectives}
        if not self.pairs:
            raise ConfigError("config.model.objectives is empty; expected pairs such as ('text_image',)")
        for name in self.pairs:
            if name not in config.data.objectives:
                raise ConfigError(f"objective {name!r} has no data objective of that name in config.data.objectives")
        self.wiring = require_choice(m.wiring, codi.WIRINGS, "wiring")
        self.conditions = check_conditions(m.conditions, "latent_align")
        self.prediction = require_choice(m.get("prediction", "eps"), PREDICTIONS, "prediction")
        self.shift_negatives = float(m.get("shift_negatives", 0.0))
        if not 0.0 <= self.shift_negatives <= 0.5:
            raise ConfigError(f"config.model.shift_negatives must be in [0, 0.5] (a fraction of the clip), got "
                              f"{self.shift_negatives}")
        modalities = {x for pair in self.pairs.values() for x in pair}
        self.unets = sorted({UNET_OF[x] for x in modalities})
        coders = sorted({LATENT_CODER_OF[x] for x in modalities})
        encoders = sorted({"clip"} | {PROMPT_ENCODER_OF[x] for x in self.conditions})
        # The measured latent scales become part of this run's config (saved with its checkpoints).
        config.model = m = with_measured_scales(m, config.init_from.get("autoencoders", ""))
        self.networks = Networks(m, self.unets + coders + encoders, dtype=jnp.dtype(config.dtype),
                                 remat_policy=config.remat_policy, attn_impl=config.attn_impl)
        self.codi = codi.build({name: self.networks[name] for name in self.unets})
        specs = config.data.preprocess.text.tokenizers
        if "clip" not in specs:
            raise ConfigError("latent_align needs data.preprocess.text.tokenizers.clip (the null condition is CLIP(''))")
        if "text" in modalities and "bert" not in specs and not pipeline.reads_encodings(config.data):
            raise ConfigError("text objectives need data.preprocess.text.tokenizers.bert (Optimus' encoder)")
        self.prompts = PromptEncoders(self.networks, tokenizers.build_tokenizer("clip", specs.clip.path),
                                      specs.clip.max_length, media_shapes(config.data))
        self.conditioning = Conditioning(self.prompts, self.conditions, m.cond_dropout) if self.conditions else None
        self.coders = LatentCoders(self.networks, m.audio_frames)
        self.schedule = make_schedule()
        self.contrastive_max_t = int(m.get("contrastive_max_t", self.schedule.num_timesteps))
        if not 0 < self.contrastive_max_t <= self.schedule.num_timesteps:
            raise ConfigError(f"config.model.contrastive_max_t must be in [1, {self.schedule.num_timesteps}], got "
                              f"{self.contrastive_max_t}")
        self._trainable = trainable_predicate(
            m.trainable or [f"{u}:{g}" for u in self.unets for g in ("env", "joint")])

    def init(self, rng):
        return self.networks.init(rng)

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

    def dataset(self, *, global_batch_size, process_index, process_count, seed):
        return pipeline.make_dataset(self.config.data, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count, seed=seed)

    def pretrained(self):
        src, have = self.config.init_from, set(self.networks.modules)
        out = []
        if src.get("autoencoders"):
            out += [Pretrained(src.autoencoders, n, n) for n in ("image_vae", "audio_vae", "optimus") if n in have]
        if src.get("bridging_align"):
            out += [Pretrained(src.bridging_align, n, n) for n in ("clip", "clap") if n in have]
        image_unet = src.get("video_ldm") or src.get("image_ldm")
        for workdir, unet in ((image_unet, "unet_image"), (src.get("audio_ldm"), "unet_audio"),
                              (src.get("text_ldm"), "unet_text")):
            if workdir and unet in have:
                out.append(Pretrained(workdir, unet, unet))
        return out

    def _eps(self, params, xt, t, context):
        variables = {"params": {u: params[u]["params"] for u in self.unets}}
        return self.codi.apply(variables, xt, t, context, wiring=self.wiring)

    def _context(self, params, batch, rng, b):
        if self.conditioning is not None and all(has_input(batch, x, "prompt") for x in self.conditions):
            return self.conditioning(params, batch, rng)
        null = self.prompts.unconditional(params, "text", rng)
        return jnp.broadcast_to(jax.lax.stop_gradient(null), (b,) + null.shape[1:])

    def loss(self, params, batch, rng, step):
        m = self.config.model
        present = {n: p for n, p in self.pairs.items() if all(has_input(batch, x, "latent") for x in p)}
        if len(present) != 1:
            raise ConfigError(f"a batch must carry exactly one objective's pair; found {sorted(present)} in "
                              f"a batch with keys {sorted(batch)}")
        (name, pair), = present.items()
        k_lat, k_ctx, k_diff = jax.random.split(rng, 3)
        x0 = {x: jax.lax.stop_gradient(self.coders.encode(params, x, batch, k))
              for x, k in zip(pair, jax.random.split(k_lat, len(pair)))}
        b = next(iter(x0.values())).shape[0]
        context = self._context(params, batch, k_ctx, b)
        mean_loss, aux = diffusion_loss(self._eps, params, x0, k_diff, self.schedule, context=context,
                                        prediction=self.prediction)
        loss = len(pair) * mean_loss  # L_A + L_B
        metrics = {f"{name}/loss": loss}
        metrics.update({f"{name}/eps_mse_{x}": v for x, v in aux["per_modality"].items()})
        if m.contrastive_weight > 0:
            contrastive, accuracy = self.env_contrastive(params, pair, x0, jax.random.fold_in(k_diff, 1))
            loss = loss + m.contrastive_weight * contrastive
            metrics.update({f"{name}/env_contrastive": contrastive, f"{name}/env_accuracy": accuracy})
        return loss, metrics

    def env_contrastive(self, params, pair, x0, rng):
        """(InfoNCE loss, top-1 accuracy) over the global batch between the pair's environment encodings
        V_A(z_t^A) and V_B(z_t^B), the paper's contrastive term.

        The whole batch is noised at one timestep: V reads the time embedding, and with a t per example a pair is
        told apart by its t alone, so the term is met while V encodes nothing of the content (measured on the cpu
        run: encodings of different examples at one t at cosine 0.997-1.0, top-1 0.8-0.9 in training).

        t is uniform below `model.contrastive_max_t` (default: the whole schedule). Near the end of the schedule
        z_t is mostly noise and no pair can be matched; there the term only adds noise to V's gradient.

        With `model.shift_negatives` > 0 and a pair of timed modalities (audio_video), each row also has a hard
        negative: its partner shifted in time (`time_shifted`). In a batch of random examples colour and shape
        tell most pairs apart, so without it V learns no timing (run4: onset read from V at chance), and joint
        onset agreement rests on V carrying exactly that."""
        k_noise, k_shift = jax.random.split(rng)
        t, noise = draw_t_and_noise(k_noise, x0, self.contrastive_max_t)
        t = jnp.full_like(t, t[0])
        xt = q_sample(self.schedule, x0, t, noise)
        env = lambda x, z: self.networks.apply(params, UNET_OF[x], z, t, method="env_encode")  # noqa: E731
        a, b = (env(x, xt[x]) for x in pair)
        hard = {}
        if self.shift_negatives > 0 and all(x in TIMED for x in pair):
            fraction = random_shift_fractions(k_shift, a.shape[0], self.shift_negatives)
            hard = dict(hard_a=env(pair[0], time_shifted(xt[pair[0]], fraction)),
                        hard_b=env(pair[1], time_shifted(xt[pair[1]], fraction)))
        return info_nce(a, b, jnp.asarray(INIT_LOGIT_SCALE), self.mesh, **hard)

    # -- probe: joint against independent generation ------------------------------------------------------

    def probe_outputs(self, params, batch, rng):
        """{"joint" | "independent": {output: decoded}} of the probe's outputs from its condition, one noise; and
        "env": {"output@t": V(z_t)} of the probe examples' own clips at `probe.env_timesteps`."""
        spec = self.config.probe
        condition, outputs = spec.get("condition", "text"), tuple(spec.get("outputs", ("video", "audio")))
        k_cond, k_noise, k_env = jax.random.split(rng, 3)
        cond = self.prompts.encode(params, condition, batch, k_cond)
        uncond = self.prompts.unconditional(params, condition, k_cond)
        noise = {}
        for i, m in enumerate(outputs):
            shape = (cond.shape[0],) + self.coders.latent_shape(params, m, batch)
            noise[m] = jax.random.normal(jax.random.fold_in(k_noise, i), shape)

        def eps_fn(x, t, c):
            return eps_from_prediction(self.schedule, x, t, self._eps(params, x, t, c), self.prediction)

        sample = lambda x_T: guided_sample(  # noqa: E731
            eps_fn, cond, uncond, x_T, schedule=self.schedule, guidance=float(spec.get("guidance", 7.5)),
            method=spec.get("sampler", "dpmpp_2m"), steps=int(spec.get("steps", 10)))
        joint = sample(noise)
        independent = {}
        for m in outputs:
            independent.update(sample({m: noise[m]}))
        out = {name: {m: self.coders.decode(params, m, z) for m, z in latents.items()}
               for name, latents in (("joint", joint), ("independent", independent))}
        out["env"] = self._env_readout(params, batch, outputs, tuple(spec.get("env_timesteps", ENV_TIMESTEPS)), k_env)
        return out

    def _env_readout(self, params, batch, modalities, timesteps, rng):
        """{"modality@t": V(z_t) [B, D]} of the batch's own clips noised at each t (one noise per modality)."""
        readout = {}
        for i, m in enumerate(modalities):
            k_lat, k_noise = jax.random.split(jax.random.fold_in(rng, i))
            x0 = self.coders.encode(params, m, batch, k_lat)
            noise = jax.random.normal(k_noise, x0.shape)
            for t in timesteps:
                tt = jnp.full((x0.shape[0],), t, jnp.int32)
                zt = q_sample(self.schedule, x0, tt, noise)
                readout[f"{m}@{t}"] = self.networks.apply(params, UNET_OF[m], zt, tt, method="env_encode")[:, 0]
        return readout

    def probe(self):
        spec = self.probe_spec("joint")
        if spec is None:
            return None
        outputs = tuple(spec.get("outputs", ("video", "audio")))
        if "text" in outputs:
            raise ConfigError("config.probe.outputs: the joint probe reads image, video and audio outputs")
        condition = spec.get("condition", "text")
        batch = pipeline.probe_batch(self.config.data, sorted({condition, *outputs}), spec.num_examples)
        samples = self.config.data.preprocess.audio.num_samples

        def finish(generated):
            for outs in generated.values():
                if "audio" in outs:
                    outs["audio"] = probes.waves_from_mels(outs["audio"], samples)
            return generated

        return probes.Probe("joint", batch, self.probe_outputs, finish=finish, condition=condition)

