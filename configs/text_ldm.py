"""Stage 1b (text ldm): the text diffuser over Optimus latents, conditioned on images.

    python -m codi_jax.train --config configs/text_ldm.py:cpu --workdir workdirs/text_ldm

eps-MSE on Optimus latents (BERT posterior mean x 4.3108 of the caption) conditioned on the frozen
CLIP image encoding (captioning direction; 10% dropout to CLIP of an all-zero image). Trains the
base group of `unet_text`. Pretrained parts: init_from.autoencoders (optimus),
init_from.bridging_align (clip). WORKDIR/checkpoints then hold `unet_text` for latent_align
(init_from.text_ldm). Add "video" or "audio" to model.conditions (and the data objective) to
train on other paired sources too.

Variants:
  tiny  tests / CI: tiny networks (16-d latent), 16 px images, 30 steps; the eps-MSE falls.
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): v-prediction and the latent
        scale measured by its autoencoders run, as cpu; 300 steps.
  cpu   Shapes & Tones at 32 px, the CPU networks, conditioned on image, video or audio, 2000 steps of 64;
        generation probe 80 % (shape 92-98 %, colour 75-86 %; video -> text motion 20 %: the video encoder
        does not carry motion, see bridging_align).
  full  the released text UNet (768-d Optimus latent, 2.05B with env / joint layers), Optimus and
        CLIP on prepared image-text records; bf16 compute, remat.
"""
from codi_jax.train.defaults import base_config, cpu_diffusion, model_components, shapes_tones_data

NETWORKS = ("unet_text", "optimus", "clip")


def get_config(variant: str = "tiny"):
    c = base_config("ldm", "./workdirs/text_ldm")
    c.model = model_components(NETWORKS, variant if variant in ("cpu", "full") else "tiny")
    c.model.modality, c.model.conditions, c.model.cond_dropout = "text", ("image",), 0.1
    c.model.trainable = ("unet_text:base",)
    c.model.audio_frames = 0
    c.model.sample_steps, c.model.guidance_scale = 10, 7.5
    c.model.prediction = "eps"          # the released target; "v" (Salimans & Ho) where a variant says why
    c.model.mix_conditions = False
    c.model.also_train_on = ()
    c.init_from.autoencoders, c.init_from.bridging_align = "", ""
    lengths = {"bert": 16}
    if variant in ("tiny", "quickstart"):
        c.data = shapes_tones_data(["text_image"], resolution=16, text_lengths=lengths)
        c.total_steps, c.batch_size = 30, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first: tiny with the cpu recipe's target and scale
            c.model.prediction, c.model.optimus.latent_scale = "v", "measured"
            c.total_steps = c.checkpoint_every_steps = 300
    elif variant == "cpu":
        # Steps on 16-d latents are ~50x cheaper than the image UNet's: 2000 of them take about a minute.
        cpu_diffusion(c, "text", ("image", "video", "audio"), steps=2000, batch_size=64, probe_every=500)
    elif variant == "full":
        c.data = shapes_tones_data(["text_image"], resolution=224, text_lengths={"bert": 512})
        c.data.objectives.text_image.dataset = "records"  # set data.objectives.text_image.path
        c.total_steps, c.batch_size = 200_000, 512
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 5000
        c.dtype, c.remat_policy = "bfloat16", "dots_saveable"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/text_ldm.py; "
                         "expected tiny, quickstart, cpu or full")
    return c
