"""Stage 1a (bridging_align): align the prompt encoders in one space with text as the bridge.

    python -m codi_jax.train --config configs/bridging_align.py:cpu_text_video --workdir workdirs/bridging_text_video
    python -m codi_jax.train --config configs/bridging_align.py:cpu --workdir workdirs/bridging_align \
        --config.init_from.clip_from=workdirs/bridging_text_video

Contrastive (InfoNCE over the global batch, learnable temperature per pair) between CLIP text and
CLAP audio ("text_audio"), CLIP text and CLIP video ("text_video"), and, for from-scratch small
runs, CLIP text and CLIP image ("text_image"). WORKDIR/checkpoints then hold `clip` and `clap`,
which the ldm and latent_align stages read through `config.init_from.bridging_align = WORKDIR`.
TensorBoard shows each pair's loss, retrieval accuracy and temperature.

Variants:
  tiny  tests / CI: tiny CLIP and CLAP from scratch (every tower trains), 16 px, 4 frames, 0.256 s
        audio, 30 steps: the summed loss falls.
  cpu_text_video  the Shapes & Tones run's stand-in for CLIP's own pre-training: CLIP's text and video towers
        from scratch on text_video alone, 600 steps of 64: retrieval top-1 on seen captions 100 %, on the
        unseen colour-shape pairs 83.7 % (motion is learned: only videos show it).
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): 80 steps.
  cpu   the Shapes & Tones run at 32 px, 8 frames, 1.024 s, 800 steps, the paper's bridge: CLIP's text tower
        frozen at cpu_text_video's (init_from.clip_from), the vision tower, temporal layers and CLAP align to
        it; audio and video also meet directly (audio_video: onset, which no caption states, must survive in
        both encodings). Retrieval probe (128 validation examples) at step 800: every pair 100 % top-1; on the
        unseen colour-shape pairs text_image 100, text_video 87.0, audio_video 93.5, text_audio 54.3 %.
        (Every tower trained together from scratch, text_video stalled at 25-39 %: images and audio, which
        carry no motion, pulled the text tower into dropping the word.)
  full  the paper's setting: released-size CLIP ViT-L/14 (+ temporal layers) and CLAP HTSAT-large;
        CLIP's text and image towers frozen (load them with init_from.clip_from = a workdir holding
        converted weights), CLAP and the temporal layers trained on text-audio and text-video records.
"""
from codi_jax.train.defaults import CPU_RESOLUTION, base_config, model_components, probe_config, shapes_tones_data


def get_config(variant: str = "tiny"):
    c = base_config("bridging_align", "./workdirs/bridging_align")
    c.init_from.clip_from = ""  # a workdir whose checkpoint holds `clip` (e.g. converted released weights)
    # tiny / cpu: 32-d embeddings, the tiny UNets' context width; full: the released sizes.
    c.model.update(model_components(("clip", "clap"), "cpu" if variant.startswith("cpu") else
                                    "tiny" if variant == "quickstart" else variant))
    if variant in ("tiny", "quickstart", "cpu", "cpu_text_video"):
        c.model.pairs = ("text_audio", "text_video", "text_image")
        c.model.trainable = ("clip:*", "clap:*", "bridge:*")
    if variant in ("tiny", "quickstart"):
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=16, num_frames=4, audio_samples=4096,
                                   text_lengths={"clip": 16})
        c.total_steps, c.batch_size = 30, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 30
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first
            c.total_steps = c.checkpoint_every_steps = 80
            c.sample_every_steps = 1000
    elif variant == "cpu_text_video":
        # The CPU run's stand-in for CLIP's pre-training: text and video towers from scratch on text_video alone,
        # so the text tower learns to keep the motion word, which only videos show.
        c.model.pairs = ("text_video",)
        c.data = shapes_tones_data(["text_video"], resolution=CPU_RESOLUTION, num_frames=8, text_lengths={"clip": 16})
        c.probe = probe_config("retrieval", every_steps=200, num_examples=128)
        c.total_steps, c.batch_size = 600, 64
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 25, 600, 600
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 30
    elif variant == "cpu":
        # The paper's bridge: the text tower is frozen (here at cpu_text_video's, init_from.clip_from) and the
        # other encoders align to it. Trained together from scratch, images and audio (which carry no motion)
        # pulled the text tower into dropping the motion word (text_video top-1 25-39 % against 100 % alone).
        # Text is the paper's only bridge; here audio and video also meet directly, since onset (which no
        # caption states) is what joint audio + video generation must agree on: the two encodings must keep it.
        c.model.pairs = ("text_audio", "text_video", "text_image", "audio_video")
        c.model.trainable = ("clip:vision", "clip:temporal", "clap:*", "bridge:*")
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=CPU_RESOLUTION, num_frames=8,
                                   audio_samples=16384, text_lengths={"clip": 16})
        c.probe = probe_config("retrieval", every_steps=200, num_examples=128)
        c.total_steps, c.batch_size = 800, 32
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 25, 800, 800
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 30
    elif variant == "full":
        c.model.pairs = ("text_audio", "text_video")
        c.model.trainable = ("clap:*", "clip:temporal", "bridge:*")
        c.data = shapes_tones_data(["text_audio", "text_video"], resolution=224, num_frames=8, audio_samples=163840,
                                   text_lengths={"clip": 77})
        for objective in c.data.objectives.values():
            objective.dataset, objective.path = "records", ""  # prepared records directories (data_pipelines/)
        c.total_steps, c.batch_size = 100_000, 1024
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 2000
        c.dtype = "bfloat16"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/bridging_align.py; "
                         "expected tiny, quickstart, cpu or full")
    return c
