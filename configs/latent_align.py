"""Stage 2 (latent_align): environment encoders + joint cross-attention, the UNets frozen.

    python -m codi_jax.train --config configs/latent_align.py

With no variant this runs `quickstart` into ./workdirs/latent_align (README command 1): first the six stages
latent alignment stands on, each its configs/<stage>.py:quickstart (tiny networks with the cpu recipe: v-prediction,
latent scales measured by the autoencoders run) in WORKDIR/stages/<stage>, each handed to the later ones and
skipped when finished (train/prerequisites.py); then 60 steps of 8 on audio_video with the UNets frozen (env +
joint), the contrastive term as in cpu; the joint probe on 16 validation captions at the end; then the showcase
(train/showcase.py): text -> image, text -> video + audio and image -> text for two captions in WORKDIR/samples
and the probe's joint-against-independent table on stdout. 12 min 14 s on 2 cores (stages 2.0 / 1.2 / 1.2 / 1.2 /
1.7 / 0.7 min, then latent alignment, probe and samples 4.1 min), nearly all of it XLA compiling; the tiny models
learn little in that time: video accuracy 20.8 % and audio 21.9-25.0 % (chance 25-33 %), attribute agreement
37.5 % joint and independent; onset agreement 81.2 % both ways, from near-empty outputs that read back alike.

    python -m codi_jax.train --config configs/latent_align.py:cpu --workdir workdirs/latent_align \
        --config.init_from.autoencoders=workdirs/autoencoders \
        --config.init_from.bridging_align=workdirs/bridging_align \
        --config.init_from.image_ldm=workdirs/image_ldm --config.init_from.video_ldm=workdirs/video_ldm \
        --config.init_from.audio_ldm=workdirs/audio_ldm --config.init_from.text_ldm=workdirs/text_ldm

Variants:
  quickstart  (default) README command 1, as above.
  tiny  tests: tiny UNets, autoencoders and CLIP (random init, as no init_from paths are set), objectives
        text_image and text_audio mixed 1:1 on on-the-fly Shapes & Tones, 30 steps, wiring "others" (each UNet's
        connectors read the other modality's environment encoding). It logs per-pair L_A + L_B and per-modality
        eps-MSE (falling) and checkpoints the UNets. Random UNets end in a zero-initialised output conv, which
        passes no gradient to V or the connectors, so this variant also trains the UNets' base groups; every
        variant that reads trained ldm workdirs trains only env + joint, as the paper does.
  cpu   the Shapes & Tones run: the paper's three objectives text_image, text_audio, audio_video
        mixed (audio_video twice as often), v-prediction as the cpu ldms, contrastive weight 0.1, 32 px,
        8 frames, 1.024 s audio, 600 steps of 16, reading the earlier stages' workdirs; joint probe:
        text -> video + audio generated together against independently. Joint onset agreement stays at chance
        (run4: 18.5 % joint, 30.0 % independent) because V carries no onset: a nearest-centroid read of V(z_t)
        over 256 validation examples gives onset 21-32 % at t = 0-600 (colour 84-100 %) for both encoders, and
        the trained model's v-MSE is the same with the paired clip and with one of another onset. The path
        behind V works: the frozen audio UNet's connectors trained for 400 steps on an oracle token (a learned
        embedding of the true onset) give a 2.3-2.4x lower v-MSE with the right token at t = 500-700.
        V's architecture can carry it: trained with a linear head to classify onset (250 steps of 32, t < 400)
        it reads 100 % at t = 0 and 300, so the objective, not the encoder, leaves it out; contrastive_weight
        1.0 (tried) leaves V without onset (joint onset 18.8 %). What does make V carry it is where the contrastive
        term looks: on clean-ish latents (t < 300 instead of the whole schedule) and against its own partner shifted
        in time. V trained on the contrastive term alone (600 steps of 16, audio_video, trained autoencoders; the
        joint probe's readout of 64 validation clips, video / audio, at t = 0 and 500): whole schedule + shifts
        onset 22 / 13 % and 23 / 26 % at step 200 (shape 38 %); t < 300 without shifts 49 / 55 % and 48 / 52 %;
        t < 300 + shifts 68 / 75 % and 66 / 58 % (colour 79-96 %, shape 68-93 %). This variant therefore sets
        contrastive_max_t = 300 and shift_negatives = 0.375; the joint onset agreement it gives is not yet
        measured (it needs the full run).
  full  released sizes (the three CoDi UNets, SD VAE, AudioLDM VAE, Optimus, CLIP) on prepared
        records; bf16 compute, full remat. benchmarks/bench_train.py compiles its text_image step.
Set model.contrastive_weight > 0 for the paper's contrastive term between environment encoders (and
model.contrastive_max_t / model.shift_negatives for where it looks and its time-shifted hard negatives);
model.wiring = "own" reproduces the released code's wiring. To follow the paper's order, train
text_image first, then text_audio with model.trainable = ("unet_audio:env", "unet_audio:joint"),
then audio_video with ("unet_image:env", "unet_image:joint").
"""
from codi_jax.train.defaults import (CPU_AUDIO_FRAMES, CPU_RESOLUTION, base_config, model_components, probe_config,
                                     shapes_tones_data)

NETWORKS = ("unet_image", "unet_audio", "unet_text", "image_vae", "audio_vae", "optimus", "clip")


# README command 1's earlier stages, each a tiny run with the cpu recipe (configs/<stage>.py:quickstart).
QUICKSTART_STAGES = ("autoencoders", "bridging_align", "image_ldm", "video_ldm", "audio_ldm", "text_ldm")


def get_config(variant: str = "quickstart"):
    c = base_config("latent_align", "./workdirs/latent_align")
    c.model = model_components(NETWORKS, variant if variant in ("cpu", "full") else "tiny")
    c.model.wiring = "others"
    c.model.conditions, c.model.cond_dropout = (), 0.1
    c.model.trainable = ()  # empty: the env and joint groups of every UNet the objectives use
    c.model.contrastive_weight = 0.0
    c.model.shift_negatives = 0.0  # > 0: time-shifted hard negatives (up to this fraction of a clip) for audio_video
    c.model.contrastive_max_t = 1000  # the contrastive term's t is uniform below this (1000: the whole schedule)
    c.model.prediction = "eps"
    for stage in ("autoencoders", "bridging_align", "image_ldm", "video_ldm", "audio_ldm", "text_ldm"):
        c.init_from[stage] = ""
    lengths = {"clip": 16, "bert": 16}
    if variant == "quickstart":
        # The stages it stands on first (skipped where init_from names a workdir), then the paper's way: the
        # UNets frozen, env + joint trained with the cpu recipe's target and contrastive term, on audio_video
        # alone: the pair the joint table measures (each further pair is one more joint step to compile, ~70 s).
        c.prerequisites = tuple(f"configs/{stage}.py:quickstart" for stage in QUICKSTART_STAGES)
        c.model.objectives = ("audio_video",)
        c.model.audio_frames = 24
        c.model.prediction, c.model.contrastive_weight = "v", 0.1
        c.model.contrastive_max_t, c.model.shift_negatives = 300, 0.375
        for coder in ("image_vae", "audio_vae", "optimus"):
            c.model[coder].latent_scale = "measured"
        c.data = shapes_tones_data(c.model.objectives, resolution=16, num_frames=4, audio_samples=4096,
                                   text_lengths=lengths)
        c.probe = probe_config("joint", num_examples=16, condition="text", outputs=("video", "audio"))
        c.showcase = ("a red circle moving left", "a blue square moving up")
        c.total_steps, c.batch_size = 60, 8
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 20, 60, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 10
        c.ema_decay = 0.0
    elif variant == "tiny":
        c.model.trainable = tuple(f"{u}:{g}" for u in ("unet_image", "unet_audio", "unet_text")
                                  for g in ("base", "env", "joint"))
        c.model.objectives = ("text_image", "text_audio")
        c.model.audio_frames = 24
        c.data = shapes_tones_data(c.model.objectives, resolution=16, audio_samples=4096, text_lengths=lengths)
        c.total_steps, c.batch_size = 30, 8
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 1000
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
    elif variant == "cpu":
        c.model.objectives = ("text_image", "text_audio", "audio_video")
        c.model.audio_frames = CPU_AUDIO_FRAMES
        # The diffusers' target (the cpu ldm stages predict v), and the paper's contrastive term between the
        # environment encodings of a pair, which asks V to carry what both modalities share (onset for
        # audio + video) from the first steps on.
        c.model.prediction, c.model.contrastive_weight = "v", 0.1
        # ... where a pair can still be matched (t < 300), and against its partner shifted in time, the one
        # negative that colour and shape cannot tell apart (see the docstring).
        c.model.contrastive_max_t, c.model.shift_negatives = 300, 0.375
        c.data = shapes_tones_data(c.model.objectives, resolution=CPU_RESOLUTION, num_frames=8, audio_samples=16384,
                                   text_lengths=lengths)
        # The audio + video pair is what joint onset agreement rests on: it gets half the batches.
        c.data.objectives.audio_video.weight = 2.0
        c.probe = probe_config("joint", every_steps=300, num_examples=64, condition="text", outputs=("video", "audio"))
        c.total_steps, c.batch_size = 600, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 25, 600, 600
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 40
    elif variant == "full":
        c.model.objectives = ("text_image", "text_audio", "audio_video")
        c.model.audio_frames = 1024
        c.data = shapes_tones_data(c.model.objectives, resolution=256, num_frames=8, audio_samples=163840,
                                   text_lengths={"clip": 77, "bert": 64})
        for objective in c.data.objectives.values():
            objective.dataset = "records"  # set data.objectives.<pair>.path to prepared records
        c.total_steps, c.batch_size = 100_000, 256
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 2000
        c.dtype, c.remat_policy = "bfloat16", "full"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/latent_align.py; "
                         "expected quickstart, tiny, cpu or full")
    return c
