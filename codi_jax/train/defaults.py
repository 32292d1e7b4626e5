"""The trainer's default config values; every config in configs/ starts from `base_config`.

Every key here is read by the trainer (validation.py types them); a stage adds its own
sections (`model`, `data`, `objectives`, `losses`, `init_from` entries).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


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
    c.tensorboard = True
    c.init_from_ema = True              # take the EMA weights of earlier stages where they exist
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.optim = ml_collections.ConfigDict({
        "learning_rate": 1e-4, "warmup_steps": 100, "schedule": "cosine", "end_learning_rate_factor": 0.0,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "grad_clip_norm": 1.0,
    })
    # Multi-host: initialize=True on pods (TPU VMs / SLURM discover the rest); CPU multi-process
    # runs give the coordinator address, process count and id explicitly.
    c.distributed = ml_collections.ConfigDict({
        "initialize": False, "coordinator_address": "", "num_processes": 0, "process_id": -1,
    })
    c.init_from = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    return c


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:variant]` -> its get_config(variant), as `--config` reads it."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if module_spec is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


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
# The Shapes & Tones CPU run (every configs/<stage>.py:cpu): the tiny networks with VAEs that downsample by 4,
# on 32 px images / video frames and 1.024 s audio cut to 96 mel frames, so latents are 8x8x4 (image, each
# video frame) and 24x16x8 (audio) and every stage fits a 2-core machine. The VAEs' GroupNorms keep 4 channels
# per group, as SD's (128 channels, 32 groups); the audio VAE is 16 wide, at full mel size the costliest net.
# Optimus' dense layers start wider than BERT's / GPT-2's 0.02 (see optimus.BertEncoder.dense_init_std).
_CPU = {**_TINY, "image_vae": ("tiny", {"ch_mult": (1, 2, 2), "norm_groups": 8}),
        "audio_vae": ("audio_tiny", {"ch": 16, "ch_mult": (1, 2, 2), "norm_groups": 4}),
        "optimus": ("tiny", {"encoder": {"dense_init_std": 0.15},
                             "decoder": {"vocab_size": 30, "dense_init_std": 0.15}})}
CPU_RESOLUTION = 32
CPU_AUDIO_FRAMES = 96
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
        else:
            model[name] = component(_FULL[name])
    return model
