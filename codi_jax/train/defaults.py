"""The trainer's default config values; every config in configs/ starts from `base_config`.

Every key here is read by the trainer (validation.py types them); a stage adds its own
sections (`model`, `data`, `objectives`, `losses`, `init_from` entries).
"""
from __future__ import annotations

import ml_collections

from codi_jax import config_files
from codi_jax.parallel.partitioning import DEFAULT_RULES


def base_config(stage: str, workdir: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.workdir = workdir                 # used when --workdir is not given
    c.total_steps = 1000
    c.batch_size = 8                    # global, over all hosts and devices
    c.seed = 0
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.grad_accum_steps = 1
    c.ema_decay = 0.999                 # 0 turns the EMA copy off
    c.nonfinite = "skip"                # NaN/inf loss or gradient: "skip" the update, or "stop" the run
    c.dtype = "float32"                 # compute dtype; parameters stay float32
    c.remat_policy = "none"             # passed to the networks: none | full | dots_saveable | ...
    c.attn_impl = "xla"                 # attention kernel of the UNets, CLIP and BERT: xla | cudnn | pallas | splash
    c.tensorboard = True
    c.init_from_ema = True              # take the EMA weights of earlier stages where they exist
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    # Logical axis name -> mesh axes, for parameters and activations (codi_jax/parallel/partitioning.py).
    c.sharding_rules = DEFAULT_RULES
    c.optim = ml_collections.ConfigDict({
        "learning_rate": 1e-4, "warmup_steps": 100, "schedule": "cosine", "end_learning_rate_factor": 0.0,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "grad_clip_norm": 1.0,
    })
    # Multi-host: initialize=True on pods (TPU VMs / SLURM discover the rest); CPU multi-process
    # runs give the coordinator address, process count and id explicitly.
    c.distributed = ml_collections.ConfigDict({
        "initialize": False, "coordinator_address": "", "num_processes": 0, "process_id": -1,
    })
    # Earlier stages to build first, each "configs/<stage>.py:variant [key=value ...]" (train/prerequisites.py).
    c.prerequisites = ()
    # Captions to show the finished run with: samples in WORKDIR/samples and a joint table (train/showcase.py).
    c.showcase = ()
    c.init_from = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.probe = probe_config("")
    return c


def probe_config(kind: str, every_steps: int = 0, num_examples: int = 32, **extra) -> ml_collections.ConfigDict:
    """`config.probe` (codi_jax.eval.probes): kind "" is off; every_steps 0 probes only at the end. Generating
    probes sample with `sampler` / `steps` / `guidance` (classifier-free guidance scale)."""
    return ml_collections.ConfigDict(dict(kind=kind, every_steps=every_steps, num_examples=num_examples,
                                          sampler="dpmpp_2m", steps=10, guidance=7.5, **extra))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:variant]` -> its get_config(variant), as `--config` reads it."""
    return config_files.load(spec)


def shapes_tones_data(objectives, *, resolution: int, text_lengths: dict | None = None, num_frames: int = 8,
                      audio_samples: int = 16384, weights=None) -> ml_collections.ConfigDict:
    """A data config of on-the-fly Shapes & Tones objectives (codi_jax.data.pipeline) for CPU runs.

    `objectives` are names made of modalities ("text_image", "image_audio_text", ...);
    `text_lengths` maps each tokenizer the stage reads (clip / bert / gpt2) to its padded length.
    """
    from codi_jax.data import pipeline

    text_lengths = dict(text_lengths or {})
    data = pipeline.default_config(tuple(objectives), weights=weights, resolution=resolution,
                                   text_encoders=tuple(text_lengths) or ("clip",))
    for kind, length in text_lengths.items():
        data.preprocess.text.tokenizers[kind].max_length = length
    data.preprocess.video.num_frames = num_frames
    data.preprocess.audio.num_samples = audio_samples
    return data


# The Shapes & Tones CPU recipe of the diffusion stages (every ldm config's `cpu` variant; `full` keeps the
# released recipe). Where it departs from the paper, and why (measured on Shapes & Tones, docs/results.md):
# - v-prediction: epsilon on CoDi's schedule (sqrt(alpha_bar) = 0.068 at t = 999) leaves our small UNets'
#   ten-step samples far outside the latent range (std ~7 against 1; saturated pictures, chance read-back);
# - latents at unit rms: SD's 0.18215 gives our small image VAE's latents an rms of 0.3 (audio: 2.7), so the
#   noise drowns them early (image) or late (audio); the scale is measured from the trained autoencoder;
# - conditions from every other modality, each example taking one or a random mix of them: CoDi trains each
#   diffuser on text (the text diffuser on images) and leaves the rest to bridging alignment, but minutes of
#   aligning leave the encodings of one example close, not equal, and attributes only some inputs carry
#   (motion: text, video; onset: audio, video) can only be learned from inputs that carry them; the mixes
#   are what multi-condition generation feeds the diffuser;
# - cached encodings (data.encodings): the frozen encoders run once (codi_jax.precompute), not every step.
def cpu_diffusion(c, modality: str, conditions, *, also_train_on=(), steps: int, batch_size: int,
                  learning_rate: float = 1e-3, probe_every: int = 0) -> None:
    """Set an ldm config's `cpu` variant to the recipe above: the diffuser of `modality`, conditioned on
    `conditions`, trained on on-the-fly Shapes & Tones (or the cache data.encodings names) at 32 px, 8 frames,
    1.024 s of audio; generation probe on 64 validation examples."""
    m = c.model
    for encoder in ("clip", "clap"):  # the prompt encoders of the conditions
        if encoder not in m:
            m[encoder] = model_components((encoder,), "cpu")[encoder]
    m.modality, m.conditions, m.also_train_on = modality, tuple(conditions), tuple(also_train_on)
    m.prediction, m.mix_conditions, m.cond_dropout = "v", True, 0.1
    m.audio_frames = CPU_AUDIO_FRAMES
    objectives = ["_".join(dict.fromkeys((x,) + tuple(conditions))) for x in (modality,) + tuple(also_train_on)]
    c.data = shapes_tones_data(objectives, resolution=CPU_RESOLUTION, num_frames=8, audio_samples=16384,
                               text_lengths={"clip": 16, "bert": 16, "gpt2": 16})
    c.probe = probe_config("generation", every_steps=probe_every, num_examples=64)
    c.total_steps, c.batch_size = steps, batch_size
    c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 25, steps, steps
    c.optim.learning_rate, c.optim.warmup_steps = learning_rate, 40


def component(variant: str, **overrides) -> ml_collections.ConfigDict:
    """`config.model.<component>`: a preset of the network's module plus constructor overrides."""
    return ml_collections.ConfigDict({"variant": variant, "overrides": overrides})


# Component presets whose widths fit together: prompt encoders project to the UNets' context width,
# Optimus' latent is the text UNet's width, the GPT-2 vocabulary is the Shapes & Tones one (30 tokens).
_TINY = {
    "clip": ("tiny", {"projection_dim": 32, "max_positions": 16}),
    "clap": ("tiny", {"joint_embed_dim": 32}),
    "image_vae": ("tiny", {}),
    "audio_vae": ("audio_tiny", {}),
    "vocoder": ("tiny", {}),
    "optimus": ("tiny", {"decoder": {"vocab_size": 30}}),
    "unet_image": ("tiny", {}),
    "unet_audio": ("tiny_audio", {}),
    "unet_text": ("tiny", {}),
}
# The Shapes & Tones CPU run (every configs/<stage>.py:cpu): the tiny networks with an image VAE that
# downsamples by 4 and a mel VAE that downsamples by 8, on 32 px images / video frames and 1.024 s audio cut to
# 96 mel frames, so latents are 8x8x4 (image, each video frame) and 12x8x8 (audio: a quarter of the audio
# UNet's work at 4x, and the mel VAE still reads back colour, shape and onset on 64 of 64 validation clips)
# and every stage fits a 2-core machine. The VAEs' GroupNorms keep 4 channels per group, as SD's (128 channels,
# 32 groups); the audio VAE is 16 wide, at full mel size the costliest net.
# Optimus' dense layers start wider than BERT's / GPT-2's 0.02 (see optimus.BertEncoder.dense_init_std).
# CLIP's vision tower is 4 layers of width 64 (the tiny one is 2 of 32): only the video tower's temporal layers can
# tell a motion's direction, and at the tiny size text -> video retrieval learns the axis but not the sign
# (50.8 % top-1 over colour x shape x motion after 400 text_video-only steps; 100 % at this size after 600). In the
# four-pair cpu bridging the text tower still drops the motion word (see configs/bridging_align.py).
# The video UNet's temporal attention normalises over channels, not frames (a departure from the released model,
# models/temporal.NORMS): the frame norm cancels every frame-constant input, the condition included. The
# 1000-step cpu video_ldm decodes the audio's onset in 23 % of audio -> video generations with it against 16 %
# with the frame norm (chance 25 %; 64 each): not yet the fix the onset needs. The condition carries the onset
# (CLAP's pooled audio vector: nearest-centroid onset 94.5 % on 200 test sounds), yet the trained video UNet hardly
# reads it: its v-MSE with the right audio and with a same-colour-and-shape other-onset audio differ by under 2 % at
# every noise level (t=900: 0.222 vs 0.226). A zero-initialised learned vector per frame added to the ResBlocks'
# time embedding (tried, not kept) gave onset 25.0 % in the same 1000-step run; audio as the only condition (no
# mix, 400 steps) 18.8 %, with the same small loss gap.
_CPU = {**_TINY, "clip": ("tiny", {**_TINY["clip"][1], "vision_layers": 4, "vision_width": 64, "vision_mlp": 128}),
        "unet_image": ("tiny", {"temporal_norm": "channels"}),
        "image_vae": ("tiny", {"ch_mult": (1, 2, 2), "norm_groups": 8}),
        "audio_vae": ("audio_tiny", {"ch": 16, "ch_mult": (1, 2, 2, 2), "norm_groups": 4}),
        "optimus": ("tiny", {"encoder": {"dense_init_std": 0.15},
                             "decoder": {"vocab_size": 30, "dense_init_std": 0.15}})}
CPU_RESOLUTION = 32
CPU_AUDIO_FRAMES = 96
# The CPU run's diffusers take their latent scales from the trained autoencoders (1 / rms: see cpu_diffusion),
# not from SD's / AudioLDM's / Optimus' constants, which were measured on the released autoencoders.
MEASURED_SCALES = ("image_vae", "audio_vae", "optimus")
_FULL = {"clip": "full", "clap": "full", "image_vae": "full", "audio_vae": "audio_full", "vocoder": "full",
         "optimus": "full", "unet_image": "full", "unet_audio": "full_audio", "unet_text": "full"}


def model_components(names, size: str) -> ml_collections.ConfigDict:
    """config.model with `names` at size "tiny" (tests; widths matched as above), "cpu" (the Shapes & Tones
    CPU run) or "full" (released sizes)."""
    model = ml_collections.ConfigDict()
    for name in names:
        if size in ("tiny", "cpu"):
            variant, overrides = (_TINY if size == "tiny" else _CPU)[name]
            model[name] = component(variant, **overrides)
            if size == "cpu" and name in MEASURED_SCALES:
                model[name].latent_scale = "measured"
        else:
            model[name] = component(_FULL[name])
    return model
