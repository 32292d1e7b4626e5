"""Any-to-any generation with CoDi: conditioning, the compiled sampling call, decoding, files.

A `Request` names its inputs (any subset of text / image / video / audio, each with a mixing weight),
its outputs (any non-empty subset of the same four) and the sampler settings. `CoDiPipeline` turns it
into outputs:

1. every input goes through its aligned prompt encoder (CLIP text / image / video, CLAP audio) to one
   L2-normalised token [1, 1, D]; the unconditional token of each input modality is the original's
   (CLIP of "", CLIP of a mid-gray image or video, CLAP of silence); both sets are mixed with the
   request's weights, w_i / sum(w), without re-normalising the result (`codi.mix_conditions`). Images
   and video frames go through CLIP's processor (shortest side, centre crop) without the original demo's
   random crop and flip, so a seed fixes the whole generation;
2. one compiled call runs the whole denoising loop (`diffusion.samplers.sample` under one jit) with
   classifier-free guidance batched (`diffusion.guidance.cfg_denoiser`), all outputs stepped together
   with one shared timestep: two or more outputs go through the environment encoders and the joint
   cross-attention, one output through the plain LDM (the CoDi model decides from the latents it gets);
   `independent=True` samples each output alone from the same condition and the same initial noise;
3. the latents are decoded: image / video by the image VAE to [0, 1] (frames folded), audio by the mel
   VAE and HiFi-GAN to 16 kHz, text by Optimus's GPT-2 and the GPT-2 tokenizer.

Batches: requests sharing (outputs, sampler, steps, independent) run together in chunks of
`config.batch_size`; a short chunk is padded with copies of its last request, so every signature
compiles exactly once and a request's result does not depend on its neighbours (`generate(r)` is the
one-request batch). Randomness is per request: the seed gives the initial noise of each output
modality (the same for a modality whatever else is generated), the text decoder's draws and CLAP's
crop of long audio.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax import checkpoints, media
from codi_jax.data import griffin_lim
from codi_jax.data.preprocess import sample_frame_indices, scale_to_unit_range
from codi_jax.data.tokenizers import build_tokenizer
from codi_jax.diffusion.schedule import PREDICTIONS
from codi_jax.errors import ConfigError
from codi_jax.models import catalogue, clap, clip_preprocess, codi, optimus
from codi_jax.models.catalogue import MODALITIES, NAMES as COMPONENTS, UNETS
from codi_jax.models.networks import Networks
from codi_jax.sampling import compiled, weights
from codi_jax.sampling.requests import Request, RequestError, load_inputs

# Mel -> wave for generated audio: the trained HiFi-GAN ("vocoder", the original's path) or mel inversion +
# Griffin-Lim ("griffin_lim", no learned weights: for runs too short to train a vocoder, e.g. on a CPU).
MEL_INVERSIONS = ("vocoder", "griffin_lim")
GRIFFIN_LIM_ITERATIONS = 8
# Independent random streams drawn from one request's seed: the initial noise of each output modality
# (so a modality starts from the same noise whatever else is generated), the text decoder's draws,
# and CLAP's crop of audio longer than its clip.
_STREAMS = {"text": 0, "image": 1, "video": 2, "audio": 3, "text_decoding": 4, "audio_crop": 5}


def enable_compilation_cache(path) -> str | None:
    """Turn on JAX's persistent compilation cache in `path` ('' or 'none': leave JAX's setting,
    off unless JAX_COMPILATION_CACHE_DIR is set)."""
    if not path or str(path).lower() == "none":
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def latent_shapes(config) -> dict[str, tuple[int, ...]]:
    return {m: tuple(int(d) for d in config.latents[m]) for m in MODALITIES}


def output_shapes(config, nets: Networks, variables: Mapping[str, Any]) -> dict[str, tuple]:
    """Decoded output shapes per modality (image [H,W,3], video [F,H,W,3], audio [samples]) after checking
    `config.latents` and `config.audio_seconds` against the networks; `variables` may be abstract."""
    shapes = latent_shapes(config)
    unets = {"image": nets.unet_image, "video": nets.unet_image, "audio": nets.unet_audio, "text": nets.unet_text}
    for modality, unet in unets.items():
        if shapes[modality][-1] != unet.in_channels:
            raise ConfigError(f"latents.{modality} {list(shapes[modality])} has {shapes[modality][-1]} "
                              f"channels; its UNet takes {unet.in_channels}")
    contexts = {"clip": nets.clip.projection_dim, "clap": nets.clap.joint_embed_dim,
                **{name: nets.modules[name].context_dim for name in UNETS}}
    if len(set(contexts.values())) != 1:
        raise ConfigError(f"prompt encoders and UNets disagree on the context width: {contexts}")
    if shapes["text"] != (nets.optimus.decoder.latent_size,):
        raise ConfigError(f"latents.text {list(shapes['text'])} does not match Optimus' latent size "
                          f"{nets.optimus.decoder.latent_size}")

    def decoded(model, model_variables, latent):
        z = jax.ShapeDtypeStruct((1,) + latent, jnp.float32)
        return tuple(jax.eval_shape(lambda v, x: model.apply(v, x, method="from_latent"), model_variables, z).shape[1:])

    mel = decoded(nets.audio_vae, variables["audio_vae"], shapes["audio"])
    if mel[1:] != (nets.vocoder.num_mels, 1):
        raise ConfigError(f"latents.audio {list(shapes['audio'])} decodes to a mel {list(mel)}; the vocoder "
                          f"takes [T, {nets.vocoder.num_mels}, 1]")
    samples = mel[0] * int(np.prod(nets.vocoder.upsample_rates))
    if round(float(config.audio_seconds) * media.AUDIO_RATE) != samples:
        raise ConfigError(f"audio_seconds is {config.audio_seconds} but latents.audio decodes to "
                          f"{mel[0]} mel frames = {samples / media.AUDIO_RATE} s")
    return {"image": decoded(nets.image_vae, variables["image_vae"], shapes["image"]),
            "video": decoded(nets.image_vae, variables["image_vae"], shapes["video"]),
            "audio": (samples,), "text": ()}


def _check_tokenizers(tokenizers: Mapping[str, Any], nets: Networks) -> None:
    if tokenizers["gpt2"].vocab_size != nets.optimus.decoder.vocab_size:
        raise ConfigError(f"the gpt2 tokenizer has {tokenizers['gpt2'].vocab_size} tokens, Optimus' decoder "
                          f"{nets.optimus.decoder.vocab_size}")
    if tokenizers["clip"].vocab_size > nets.clip.vocab_size:
        raise ConfigError(f"the clip tokenizer has {tokenizers['clip'].vocab_size} tokens, more than CLIP's "
                          f"{nets.clip.vocab_size}")


def _resolve_wiring(config, sources: Mapping[str, str]) -> tuple[str, bool]:
    released = any(weights.is_released(sources[name]) for name in UNETS)
    wiring = ("own" if released else "others") if config.wiring == "auto" else config.wiring
    aliased = released if config.aliased_skip == "auto" else config.aliased_skip
    if wiring not in ("own", "others"):
        raise ConfigError(f"wiring: {wiring!r} is not 'auto', 'own' or 'others'")
    if not isinstance(aliased, bool):
        raise ConfigError(f"aliased_skip: {aliased!r} is not 'auto', true or false")
    return wiring, aliased


def _resolve_predictions(config, sources: Mapping[str, str]) -> dict[str, str]:
    """{UNet: "eps" | "v"}: config.prediction, or with "auto" what each UNet's source says (a training
    workdir's saved model.prediction; released weights predict eps)."""
    wanted = config.get("prediction", "auto")
    if wanted != "auto" and wanted not in PREDICTIONS:
        raise ConfigError(f"prediction: {wanted!r} is not 'auto' or one of {list(PREDICTIONS)}")
    out = {}
    for name in UNETS:
        kind, _, where = sources[name].partition(":")
        if wanted != "auto":
            out[name] = wanted
        elif kind == "workdir" and not weights.is_released(sources[name]):
            saved = checkpoints.saved_config(weights.resolve_checkpoint(where.partition("#")[0])[0])
            out[name] = saved.get("model", {}).get("prediction", "eps")
        else:
            out[name] = "eps"
    return out


def _key(seed: int, stream: str):
    return jax.random.fold_in(jax.random.key(seed), _STREAMS[stream])


class CoDiPipeline:
    """Any-to-any generation; build with `from_config` or `from_checkpoint` (see the module docstring)."""

    def __init__(self, config, networks: Networks, variables: Mapping[str, Any], sources: Mapping[str, str],
                 tokenizers: Mapping[str, Any]):
        self.mel_inversion = config.get("mel_inversion", "vocoder")
        if self.mel_inversion not in MEL_INVERSIONS:
            raise ConfigError(f"mel_inversion: {self.mel_inversion!r} is not one of {list(MEL_INVERSIONS)}")
        self.config = config
        self.nets = networks
        self.variables = dict(variables)
        self.sources = dict(sources)
        self.tokenizers = dict(tokenizers)
        self.wiring, self.aliased_skip = _resolve_wiring(config, self.sources)
        self.predictions = _resolve_predictions(config, self.sources)
        self.latent_shapes = latent_shapes(config)
        self.codi_variables = {"params": {name: self.variables[name]["params"] for name in UNETS}}
        self.output_shapes = output_shapes(config, networks, self.variables)
        _check_tokenizers(self.tokenizers, networks)
        self._unconditional: dict[str, jax.Array] = {}

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config, random_init: bool = False) -> "CoDiPipeline":
        """Networks as `config.models` describes them, weights from `config.components` (all random with
        `random_init`)."""
        config = copy.deepcopy(config)
        if random_init:
            for name in COMPONENTS:
                config.components[name] = "random"
        weights.resolve_latent_scales(config)
        nets = weights.build_networks(config)
        variables, sources = weights.load_variables(config, nets)
        try:
            tokenizers = {kind: build_tokenizer(kind, config.tokenizers[kind]) for kind in ("clip", "gpt2")}
        except (OSError, ValueError) as err:
            raise ConfigError(f"tokenizers: {err}") from None
        return cls(config, nets, variables, sources, tokenizers)

    @classmethod
    def from_checkpoint(cls, path, config) -> "CoDiPipeline":
        """Every component a training workdir (or its latest checkpoint folder) holds comes from it, the
        others from `config.components`; the networks are `config.models`."""
        config = copy.deepcopy(config)
        tops = {key.split("/", 1)[0] for key in weights.WeightStore().checkpoint(path)}
        held = [name for name in COMPONENTS if name in tops]
        if not held:
            raise weights.CheckpointError(f"checkpoint {path}: holds none of the components "
                                  f"{', '.join(COMPONENTS)}; it has {sorted(tops)}")
        for name in held:
            config.components[name] = f"workdir:{path}"
        return cls.from_config(config)

    # -- conditioning --------------------------------------------------------------------------------

    def _clip(self, method: str, pixels_unit_range: np.ndarray):
        """CLIP image / video token of [1, (F,) H, W, 3] pixels in [-1, 1], through the official processor."""
        size = self.nets.clip.image_size
        pixels = (clip_preprocess.preprocess_images(pixels_unit_range, size) if method == "encode_image"
                  else clip_preprocess.preprocess_videos(pixels_unit_range, size))
        return compiled.apply(self.variables["clip"], pixels, model=self.nets.clip, method=method)

    def _encode(self, modality: str, value, seed: int):
        """One input -> its L2-normalised token [1, 1, D]."""
        if modality == "text":
            try:
                ids = self.tokenizers["clip"].encode([value], self.nets.clip.max_positions)
            except ValueError as err:
                raise RequestError(f"text: {err}") from None
            return compiled.apply(self.variables["clip"], ids, model=self.nets.clip, method="encode_text")
        if modality == "image":
            return self._clip("encode_image", scale_to_unit_range(value)[None])
        if modality == "video":
            try:
                picked = value[sample_frame_indices(value.shape[0], int(self.config.condition_frames))]
            except ValueError as err:
                raise RequestError(f"video: {err}") from None
            return self._clip("encode_video", scale_to_unit_range(picked)[None])
        return compiled.encode_audio(self.variables["clap"], value[None], _key(seed, "audio_crop"),
                                     model=self.nets.clap)

    def _uncond(self, modality: str):
        """The original's unconditional token: CLIP of "", of an all-zero (mid-gray) image or video in
        [-1, 1], CLAP of silence."""
        if modality not in self._unconditional:
            size = self.nets.clip.image_size
            if modality == "text":
                token = self._encode("text", "", 0)
            elif modality == "image":
                token = self._clip("encode_image", np.zeros((1, size, size, 3), np.float32))
            elif modality == "video":
                token = self._clip("encode_video",
                                   np.zeros((1, int(self.config.condition_frames), size, size, 3), np.float32))
            else:
                (silence,) = clap.init_inputs(self.nets.clap)
                token = self._encode("audio", silence[0], 0)
            self._unconditional[modality] = token
        return self._unconditional[modality]

    def condition(self, request: Request):
        """(cond, uncond) [1, 1, D] of a loaded request: inputs and their unconditional counterparts, each set
        mixed with the request's weights. A request without inputs is unconditional (empty text)."""
        if not request.input_modalities:
            token = self._uncond("text")
            return token, token
        weights = request.mix_weights()
        conds = {m: self._encode(m, getattr(request, m), request.seed) for m in request.input_modalities}
        unconds = {m: self._uncond(m) for m in request.input_modalities}
        return codi.mix_conditions(conds, weights), codi.mix_conditions(unconds, weights)

    # -- generation ----------------------------------------------------------------------------------

    def generate(self, request: Request) -> dict:
        """Outputs of one request: {"image": uint8 [H,W,3], "video": uint8 [F,H,W,3], "audio": float32 [N] at
        16 kHz, "text": str}, for the modalities it asks for."""
        return self.generate_batch([request], progress=False)[0]

    def generate_batch(self, requests: Sequence[Request], progress: bool = True,
                       on_result: Callable[[int, dict], Any] | None = None) -> list[dict]:
        """Outputs of many requests, in order; equal signatures share compiled calls of `config.batch_size`.
        Every input is read and encoded before sampling starts, so a bad one fails early. `on_result(index,
        outputs)` is called as each request's outputs are ready (the CLI writes its files then)."""
        from tqdm.auto import tqdm

        requests = [load_inputs(r) for r in requests]
        conditions = []
        for request in requests:
            try:
                conditions.append(self.condition(request))
            except RequestError as err:
                raise RequestError(f"request {request.id!r}: {err}" if request.id else str(err)) from None
        size = int(self.config.batch_size)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.signature, []).append(index)
        chunks = [idx[i:i + size] for idx in groups.values() for i in range(0, len(idx), size)]
        results: list[dict | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="generating", unit="request", disable=not progress) as bar:
            for chunk in chunks:
                outputs = self._run([requests[i] for i in chunk], [conditions[i] for i in chunk], size)
                for index, result in zip(chunk, outputs):
                    results[index] = result
                    if on_result is not None:
                        on_result(index, result)
                bar.update(len(chunk))
        return results

    def _run(self, chunk: list[Request], conditions: list[tuple], size: int) -> list[dict]:
        """One compiled sampling call (one per output with `independent`) for up to `size` requests, padded
        to `size` with copies of the last."""
        padding = size - len(chunk)
        padded, conditions = chunk + [chunk[-1]] * padding, conditions + [conditions[-1]] * padding
        cond = jnp.concatenate([c for c, _ in conditions])
        uncond = jnp.concatenate([u for _, u in conditions])
        first = chunk[0]
        default = float(self.config.defaults.guidance)
        x_T, scales = {}, {}
        for m in first.outputs:
            shape = self.latent_shapes[m]
            x_T[m] = jnp.stack([jax.random.normal(_key(r.seed, m), shape, jnp.float32) for r in padded])
            scales[m] = jnp.asarray([r.scales(default)[m] for r in padded], jnp.float32).reshape(
                (size,) + (1,) * len(shape))
        latents = {}
        for group in ([(m,) for m in first.outputs] if first.independent else [first.outputs]):
            latents.update(compiled.sample(self.codi_variables, {m: x_T[m] for m in group}, cond, uncond,
                                   {m: scales[m] for m in group}, model=self.nets.codi, wiring=self.wiring,
                                   predictions=tuple((m, self.predictions[catalogue.UNET_OF[m]]) for m in group),
                                   aliased_skip=self.aliased_skip, method=first.sampler, steps=first.steps))
        decoded = {m: self._decode(m, z, padded) for m, z in latents.items()}
        return [{m: decoded[m][i] for m in first.outputs} for i in range(len(chunk))]

    def _decode(self, modality: str, z, requests: Sequence[Request]):
        nets, v = self.nets, self.variables
        if modality in ("image", "video"):
            return np.asarray(compiled.decode_pixels(v["image_vae"], z, model=nets.image_vae))
        if modality == "audio" and self.mel_inversion == "griffin_lim":
            return griffin_lim.mels_to_waves(np.asarray(compiled.decode_mel(v["audio_vae"], z, vae=nets.audio_vae)),
                                             self.output_shapes["audio"][0], GRIFFIN_LIM_ITERATIONS)
        if modality == "audio":
            return np.asarray(compiled.decode_audio(v["audio_vae"], v["vocoder"], z, vae=nets.audio_vae,
                                            vocoder=nets.vocoder, samples=self.output_shapes["audio"][0]))
        keys = jnp.stack([_key(r.seed, "text_decoding") for r in requests])
        tokens, lengths = compiled.decode_text(v["optimus"], z, keys, model=nets.optimus,
                                       max_length=int(self.config.text_max_tokens),
                                       greedy=self.config.text_decoding == "greedy")
        return optimus.decode_text(self.tokenizers["gpt2"], tokens, lengths)

    # -- files ---------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """The run's settings, as request.json records them next to the request."""
        return {"config": self.config.variant, "components": dict(self.sources), "wiring": self.wiring,
                "aliased_skip": self.aliased_skip, "prediction": dict(self.predictions),
                "batch_size": int(self.config.batch_size),
                "mel_inversion": self.mel_inversion,
                "text_decoding": self.config.text_decoding, "image_shape": list(self.output_shapes["image"]),
                "video_shape": list(self.output_shapes["video"]), "video_fps": float(self.config.video_fps),
                "audio_seconds": self.output_shapes["audio"][0] / media.AUDIO_RATE,
                "audio_sample_rate": media.AUDIO_RATE}

    def save(self, folder, outputs: Mapping[str, Any], request: Request) -> list[pathlib.Path]:
        """Write a generation's files into `folder`, then request.json: the request's fields (a --batch line
        that replays it), plus "run" (the pipeline's settings) and "files"."""
        written = media.write_outputs(folder, outputs, fps=float(self.config.video_fps))
        record = {**request.to_json(), "run": self.describe(), "files": sorted(p.name for p in written)}
        request_json = pathlib.Path(folder) / "request.json"
        request_json.write_text(json.dumps(record, indent=2) + "\n")
        return written + [request_json]
