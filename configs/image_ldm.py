"""Stage 1b (image ldm): the text-conditioned image diffuser.

    python -m codi_jax.train --config configs/image_ldm.py:cpu --workdir workdirs/image_ldm

eps-MSE on image-VAE latents (x 0.18215) conditioned on the frozen CLIP text encoding, with 10%
conditioning dropout to CLIP("") for classifier-free guidance. Trains the base group of
`unet_image` (the SD-1.5 layout; its temporal, env and joint groups stay frozen). Pretrained
parts: init_from.autoencoders (image_vae) and init_from.bridging_align (clip); empty means random
init. WORKDIR/checkpoints then hold `unet_image`, read by video_ldm (init_from.image_ldm) and
latent_align. TensorBoard: eps_mse, and DDIM samples (10 steps, guidance 7.5) as images.

Variants:
  tiny  tests / CI: tiny networks, 16 px images (8x8 latents), 30 steps; the eps-MSE falls.
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): v-prediction and the latent
        scale measured by its autoencoders run, as cpu; 100 steps.
  cpu   Shapes & Tones at 32 px (8x8x4 latents) on the CPU networks, conditioned on text, video or audio
        (codi_jax/train/defaults.py: cpu_diffusion), 1000 steps of 64 at lr 2e-3; generation probe 96.6 %.
  full  the released image UNet (1.77B with its video / env / joint layers), SD VAE and CLIP
        ViT-L/14 at 256 px on prepared text-image records; bf16 compute, remat.
"""
from codi_jax.train.defaults import base_config, cpu_diffusion, model_components, shapes_tones_data

NETWORKS = ("unet_image", "image_vae", "clip")


def get_config(variant: str = "tiny"):
    c = base_config("ldm", "./workdirs/image_ldm")
    c.model = model_components(NETWORKS, variant if variant in ("cpu", "full") else "tiny")
    c.model.modality, c.model.conditions, c.model.cond_dropout = "image", ("text",), 0.1
    c.model.trainable = ("unet_image:base",)
    c.model.audio_frames = 0
    c.model.sample_steps, c.model.guidance_scale = 10, 7.5
    c.model.prediction = "eps"          # the released target; "v" (Salimans & Ho) where a variant says why
    c.model.mix_conditions = False
    c.model.also_train_on = ()
    c.init_from.autoencoders, c.init_from.bridging_align = "", ""
    if variant in ("tiny", "quickstart"):
        c.data = shapes_tones_data(["text_image"], resolution=16, text_lengths={"clip": 16})
        c.total_steps, c.batch_size = 30, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first: tiny with the cpu recipe's target and scale
            c.model.prediction, c.model.image_vae.latent_scale = "v", "measured"
            c.total_steps = c.checkpoint_every_steps = 100
    elif variant == "cpu":
        cpu_diffusion(c, "image", ("text", "video", "audio"), steps=1000, batch_size=64, learning_rate=2e-3,
                      probe_every=250)
    elif variant == "full":
        c.data = shapes_tones_data(["text_image"], resolution=256, text_lengths={"clip": 77})
        c.data.objectives.text_image.dataset = "records"  # set data.objectives.text_image.path
        c.total_steps, c.batch_size = 200_000, 512
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 5000
        c.dtype, c.remat_policy = "bfloat16", "dots_saveable"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/image_ldm.py; "
                         "expected tiny, quickstart, cpu or full")
    return c
