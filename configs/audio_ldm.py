"""Stage 1b (audio ldm): the text-conditioned audio diffuser.

    python -m codi_jax.train --config configs/audio_ldm.py:cpu --workdir workdirs/audio_ldm

eps-MSE on mel-VAE latents (AudioLDM fbank of the 16 kHz wave -> encoder -> sample x 0.9228)
conditioned on the frozen CLIP text encoding (10% dropout to CLIP("")). Trains the base group of
`unet_audio`. Pretrained parts: init_from.autoencoders (audio_vae), init_from.bridging_align
(clip). WORKDIR/checkpoints then hold `unet_audio` for latent_align (init_from.audio_ldm).

Variants:
  tiny  tests / CI: tiny networks, 0.256 s of audio (24 mel frames -> 12x32x8 latents), 30 steps;
        the eps-MSE falls.
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): v-prediction and the latent
        scale measured by its autoencoders run, as cpu; 60 steps.
  cpu   Shapes & Tones, 1.024 s cut to 96 mel frames (12x8x8 latents), the CPU networks, conditioned on text,
        image or video, 1400 steps of 32 at lr 2e-3; generation probe 96.5 % (video -> audio onset the last
        to rise: 86 %).
  full  the released audio UNet, AudioLDM VAE and CLIP on 10.24 s clips (1024 frames -> 8x256x16
        latents) from prepared text-audio records; bf16 compute, remat.
"""
from codi_jax.train.defaults import base_config, cpu_diffusion, model_components, shapes_tones_data

NETWORKS = ("unet_audio", "audio_vae", "clip")


def get_config(variant: str = "tiny"):
    c = base_config("ldm", "./workdirs/audio_ldm")
    c.model = model_components(NETWORKS, variant if variant in ("cpu", "full") else "tiny")
    c.model.modality, c.model.conditions, c.model.cond_dropout = "audio", ("text",), 0.1
    c.model.trainable = ("unet_audio:base",)
    c.model.sample_steps, c.model.guidance_scale = 10, 7.5
    c.model.prediction = "eps"          # the released target; "v" (Salimans & Ho) where a variant says why
    c.model.mix_conditions = False
    c.model.also_train_on = ()
    c.init_from.autoencoders, c.init_from.bridging_align = "", ""
    if variant in ("tiny", "quickstart"):
        c.data = shapes_tones_data(["text_audio"], resolution=16, audio_samples=4096, text_lengths={"clip": 16})
        c.model.audio_frames = 24
        c.total_steps, c.batch_size = 30, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first: tiny with the cpu recipe's target and scale
            c.model.prediction, c.model.audio_vae.latent_scale = "v", "measured"
            c.total_steps = c.checkpoint_every_steps = 60
    elif variant == "cpu":
        cpu_diffusion(c, "audio", ("text", "image", "video"), steps=1400, batch_size=32, learning_rate=2e-3,
                      probe_every=200)
    elif variant == "full":
        c.data = shapes_tones_data(["text_audio"], resolution=16, audio_samples=163840, text_lengths={"clip": 77})
        c.data.objectives.text_audio.dataset = "records"  # set data.objectives.text_audio.path
        c.model.audio_frames = 1024
        c.total_steps, c.batch_size = 200_000, 512
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 5000
        c.dtype, c.remat_policy = "bfloat16", "dots_saveable"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/audio_ldm.py; "
                         "expected tiny, quickstart, cpu or full")
    return c
