"""Any-to-any sampling: network sizes, latent shapes, output durations, and where every component's weights
come from. Read by `python -m codi_jax.sample` and `codi_jax.sampling.CoDiPipeline.from_config`.

Smoke run (random weights, tiny networks; about a minute of compiling on a CPU, then image.png, audio.wav
and request.json in /tmp/codi_tiny):
  python -m codi_jax.sample --config configs/sample.py:tiny --random-init \
      --text "a red circle moving left" --outputs image,audio --out /tmp/codi_tiny

Variants:
  tiny  tiny networks (tests, smoke runs, timing): image 32x32 (latent [16, 16, 4]; the tiny VAE
        downsamples by 2), video 4 frames of 32x32 (latent [4, 16, 16, 4]), audio 0.32 s at 16 kHz
        (latent [16, 32, 8] -> mel [32, 64] -> 5,120 samples), text latent [16].
  cpu   the Shapes & Tones run of the configs/<stage>.py:cpu training stages (the CPU networks),
        read from their workdirs: image 32x32 (latent [8, 8, 4]), video 8 frames of 32x32 at 7.8125 fps
        (Shapes & Tones: frame k spans audio samples [2048k, 2048(k+1))), audio 0.96 s (latent
        [12, 8, 8] -> the 96 mel frames latent_align trains on, inverted by Griffin-Lim), text latent [16].
  full  the released CoDi: image 512x512 (latent [64, 64, 4]), video 8 frames of 256x256 (latent
        [8, 32, 32, 4]), audio 10.24 s (latent [256, 16, 8] -> mel [1024, 64] -> 163,840 samples), text
        latent [768]; weights converted from the released checkpoints, tokenizers from local folders.

`models.<component>` is {"variant": a preset of the network's module CONFIGS, "overrides": constructor
kwargs}: the training configs' presets (codi_jax.train.defaults.model_components, whose tiny widths fit
together), so the networks match the checkpoints the stages write. `components.<component>` says where
the weights come from:
  "random"                  drawn on the host from `init_seed` (codi_jax.sampling.random_variables);
  "workdir:<DIR>[#<path>]"  the latest checkpoint of a training workdir (DIR, or DIR/checkpoints/<step>
                            for that latest step): the variables under <path> (default: the component's
                            name in the training stages) of the run's parameter tree, EMA where kept;
  "released:<file>"         a released .pth / .safetensors through codi_jax.convert's converters (keys
                            with or without the full-model prefix).
`wiring` / `aliased_skip` "auto": the released code's joint wiring ("own" context, aliased first skip)
when any UNet comes from released weights, the paper's ("others", standard skip) otherwise.
Latents are channels-last and are checked against the networks when the pipeline is built, as is
`audio_seconds` against the audio latent's decoded length.
"""
from ml_collections import ConfigDict

from codi_jax.models.catalogue import NAMES, NETWORKS
from codi_jax.train.defaults import model_components


def get_config(variant: str = "tiny") -> ConfigDict:
    c = ConfigDict()
    c.variant = variant
    c.models = model_components(NAMES, variant if variant in ("cpu", "full") else "tiny")
    c.components = ConfigDict({name: "random" for name in NAMES})
    c.init_seed = 0
    # Local tokenizer folders, or "" for the Shapes & Tones vocabularies of codi_jax.data.tokenizers.
    c.tokenizers = ConfigDict(dict(clip="", gpt2=""))
    # Frames a conditioning video is sampled down to (uniformly over the clip) for the video CLIP.
    c.condition_frames = 4
    # Optimus decoding: "sample" is the original's plain multinomial sampling, "greedy" is deterministic.
    c.text_decoding = "sample"
    c.text_max_tokens = 30
    c.wiring = "auto"
    # What the UNets predict: "auto" reads it from each UNet's training workdir (released weights: "eps").
    c.prediction = "auto"
    c.aliased_skip = "auto"
    c.compute_dtype = "float32"
    # Attention kernel of the UNets, CLIP and BERT (codi_jax.models.attention): xla | cudnn | pallas | splash.
    c.attn_impl = "xla"
    # Generated mel -> wave: "vocoder" (the trained HiFi-GAN, as the original) or "griffin_lim" (no weights).
    c.mel_inversion = "vocoder"
    # Requests per compiled sampling call; shorter batches are padded, so each signature compiles once.
    c.batch_size = 4
    c.defaults = ConfigDict(dict(sampler="ddim", steps=50, guidance=7.5, seed=0))
    # Persistent XLA compilation cache ("": leave JAX's own setting, off unless JAX_COMPILATION_CACHE_DIR is set);
    # the CLI's --compilation-cache overrides it.
    c.compilation_cache_dir = "~/.cache/codi_jax/xla"
    if variant == "tiny":
        c.latents = ConfigDict(dict(image=(16, 16, 4), video=(4, 16, 16, 4), audio=(16, 32, 8), text=(16,)))
        c.audio_seconds = 0.32
        c.video_fps = 8.0
        c.defaults.steps = 2
    elif variant == "cpu":
        # Each component from the workdir of the stage that trains it last.
        c.components = ConfigDict({name: f"workdir:workdirs/{net.stage}" for name, net in NETWORKS.items()})
        c.condition_frames = 8
        c.latents = ConfigDict(dict(image=(8, 8, 4), video=(8, 8, 8, 4), audio=(12, 8, 8), text=(16,)))
        c.audio_seconds = 0.96
        c.video_fps = 7.8125
        # Minutes of CPU training cannot make a HiFi-GAN that keeps the tones' harmonics (the run measures
        # its own accuracy on real mels); the mel round trip through Griffin-Lim keeps them.
        c.mel_inversion = "griffin_lim"
        # The caption's most likely words: a minutes-trained Optimus still spreads some probability over
        # neighbouring attribute words, which plain sampling would read out.
        c.text_decoding = "greedy"
        c.batch_size = 50
    elif variant == "full":
        encoders = "released:checkpoints/CoDi_encoders.pth"
        c.components = ConfigDict(dict(
            clip=encoders, clap=encoders, optimus=encoders, image_vae=encoders, audio_vae=encoders, vocoder=encoders,
            unet_image="released:checkpoints/CoDi_video_diffuser_8frames.pth",
            unet_text="released:checkpoints/CoDi_text_diffuser.pth",
            unet_audio="released:checkpoints/CoDi_audio_diffuser_m.pth"))
        c.tokenizers = ConfigDict(dict(clip="tokenizers/clip-vit-large-patch14", gpt2="tokenizers/optimus-gpt2"))
        # The original's video loader feeds 4 frames to the video CLIP.
        c.condition_frames = 4
        c.latents = ConfigDict(dict(image=(64, 64, 4), video=(8, 32, 32, 4), audio=(256, 16, 8), text=(768,)))
        c.audio_seconds = 10.24
        c.video_fps = 8.0
        c.compute_dtype = "bfloat16"
        c.batch_size = 1
    else:
        raise ValueError(f"unknown sample config variant {variant!r}; expected tiny, cpu or full")
    return c
