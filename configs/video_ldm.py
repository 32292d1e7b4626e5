"""Stage 1b (video ldm): the text-conditioned video diffuser, grown from the image diffuser.

    python -m codi_jax.train --config configs/video_ldm.py:cpu --workdir workdirs/video_ldm \
        --config.init_from.image_ldm=workdirs/image_ldm

eps-MSE on per-frame image-VAE latents [B, F, h, w, 4] conditioned on the frozen CLIP text
encoding (10% dropout to CLIP("")). `unet_image` starts from the image ldm's weights
(init_from.image_ldm) and only its temporal modules train (the paper: the video UNet is the image
UNet plus temporal layers); add "unet_image:base" to model.trainable to fine-tune the spatial
layers too. Other pretrained parts: init_from.autoencoders (image_vae), init_from.bridging_align
(clip). WORKDIR/checkpoints then hold the video-capable `unet_image` for latent_align.

Variants:
  tiny  tests / CI: tiny networks, 4 frames of 16 px, 30 steps; the eps-MSE falls. Without
        init_from.image_ldm the UNet is random and its zero-initialised output conv passes no
        gradient to the temporal layers, so this variant trains base + temporal from scratch;
        with init_from.image_ldm set, train temporal only (--config.model.trainable=...).
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): v-prediction and the latent
        scale measured by its autoencoders run, as cpu; 50 steps from its image_ldm.
  cpu   Shapes & Tones, 8 frames of 32 px (8x8x8x4 latents), the CPU networks, conditioned on text, image or
        audio; base and temporal layers train, on videos and on images (also_train_on), 1000 steps of 16 at
        lr 2e-3 from the image ldm. Generation probe at step 1000 (guidance 7.5; 33 min 30 s on 2 cores in
        the full cpu run, docs/results.md): colour 86-100 %, shape 97-100 % from every condition, text -> video
        motion 41 %, audio -> video onset 23 % (chance: 25 %). With the released frame norm (below) the same
        run gave colour 98-100 %, shape 80-98 %, motion 44 %, onset 16 %. The onset fails twice: at guidance 7.5 the object is drawn in every frame (decoded onset 0 for 55
        of 64 audio-conditioned videos; at guidance 1.5 the onsets spread over 0-3), and at either
        guidance the onset the audio encoding carries (audio_video retrieval 100 %) is not followed
        (onset right 17 % at 1.5; measured with the frame norm). The cpu networks normalise the temporal
        attention over channels (train/defaults.py), since the frame norm removes any condition constant
        over frames (tests/test_temporal.py); that alone does not make the onset followed (23 % against 16 %,
        64 probe videos; a 400-step audio-only A/B with a random CLAP: 28 % against 23 %).
  full  the released image+video UNet, 8 frames of 256 px (4x8x32x32 latents) on prepared
        text-video records; bf16 compute, full remat.
"""
from codi_jax.train.defaults import base_config, cpu_diffusion, model_components, shapes_tones_data

NETWORKS = ("unet_image", "image_vae", "clip")


def get_config(variant: str = "tiny"):
    c = base_config("ldm", "./workdirs/video_ldm")
    c.model = model_components(NETWORKS, variant if variant in ("cpu", "full") else "tiny")
    c.model.modality, c.model.conditions, c.model.cond_dropout = "video", ("text",), 0.1
    c.model.trainable = ("unet_image:temporal",)
    c.model.audio_frames = 0
    c.model.sample_steps, c.model.guidance_scale = 10, 7.5
    c.model.prediction = "eps"          # the released target; "v" (Salimans & Ho) where a variant says why
    c.model.mix_conditions = False
    c.model.also_train_on = ()
    c.init_from.autoencoders, c.init_from.bridging_align, c.init_from.image_ldm = "", "", ""
    if variant in ("tiny", "quickstart"):
        c.model.trainable = ("unet_image:base", "unet_image:temporal")
        c.data = shapes_tones_data(["text_video"], resolution=16, num_frames=4, text_lengths={"clip": 16})
        c.total_steps, c.batch_size = 30, 8
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first: tiny with the cpu recipe's target and scale
            c.model.prediction, c.model.image_vae.latent_scale = "v", "measured"
            c.total_steps = c.checkpoint_every_steps = 50
    elif variant == "cpu":
        # The spatial layers train too, on video and on images: frozen at the image diffuser's weights they
        # never learn the motion word (only captions and videos carry it), and video alone would let the
        # image skill drift.
        c.model.trainable = ("unet_image:base", "unet_image:temporal")
        cpu_diffusion(c, "video", ("text", "image", "audio"), also_train_on=("image",), steps=1000, batch_size=16,
                      learning_rate=2e-3, probe_every=500)
        c.checkpoint_every_steps = 200
    elif variant == "full":
        c.data = shapes_tones_data(["text_video"], resolution=256, num_frames=8, text_lengths={"clip": 77})
        c.data.objectives.text_video.dataset = "records"  # set data.objectives.text_video.path
        c.total_steps, c.batch_size = 100_000, 256
        c.optim.learning_rate, c.optim.warmup_steps = 5e-5, 2000
        c.dtype, c.remat_policy = "bfloat16", "full"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/video_ldm.py; "
                         "expected tiny, quickstart, cpu or full")
    return c
