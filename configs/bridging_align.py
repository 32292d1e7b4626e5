"""Stage 1a (bridging_align): align the prompt encoders in one space with text as the bridge.

    python -m codi_jax.train --config configs/bridging_align.py:cpu --workdir workdirs/bridging_align

Contrastive (InfoNCE over the global batch, learnable temperature per pair) between CLIP text and
CLAP audio ("text_audio"), CLIP text and CLIP video ("text_video"), and, for from-scratch small
runs, CLIP text and CLIP image ("text_image"). WORKDIR/checkpoints then hold `clip` and `clap`,
which the ldm and latent_align stages read through `config.init_from.bridging_align = WORKDIR`.
TensorBoard shows each pair's loss, retrieval accuracy and temperature.

Variants:
  tiny  tests / CI: tiny CLIP and CLAP from scratch (every tower trains), 16 px, 4 frames, 0.256 s
        audio, 30 steps: the summed loss falls.
  cpu   the Shapes & Tones run, tiny networks from scratch at 32 px, 8 frames, 1.024 s, 800 steps; audio and
        video also meet directly (audio_video). Retrieval probe (128 validation examples): text_image,
        text_audio and audio_video top-1 100 % by step 800; text_video 35 % at step 600 (colour and shape
        right; motion mostly not: the video tower keeps it, same colour + shape with another motion at cosine
        0.70, but the caption embeddings sit at 0.986, since images and audio, which carry no motion, pull the
        text tower towards dropping the word; trained on text_video alone the same CLIP reaches 100 %).
  full  the paper's setting: released-size CLIP ViT-L/14 (+ temporal layers) and CLAP HTSAT-large;
        CLIP's text and image towers frozen (load them with init_from.clip_from = a workdir holding
        converted weights), CLAP and the temporal layers trained on text-audio and text-video records.
"""
from codi_jax.train.defaults import CPU_RESOLUTION, base_config, model_components, probe_config, shapes_tones_data


def get_config(variant: str = "tiny"):
    c = base_config("bridging_align", "./workdirs/bridging_align")
    c.init_from.clip_from = ""  # a workdir whose checkpoint holds `clip` (e.g. converted released weights)
    # tiny / cpu: 32-d embeddings, the tiny UNets' context width; full: the released sizes.
    c.model.update(model_components(("clip", "clap"), variant))
    if variant in ("tiny", "cpu"):
        c.model.pairs = ("text_audio", "text_video", "text_image")
        c.model.trainable = ("clip:*", "clap:*", "bridge:*")
    if variant == "tiny":
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=16, num_frames=4, audio_samples=4096,
                                   text_lengths={"clip": 16})
        c.total_steps, c.batch_size = 30, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 30
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 3
        c.ema_decay = 0.0
    elif variant == "cpu":
        # Text is the paper's only bridge; here audio and video also meet directly, since onset (which no
        # caption states) is what joint audio + video generation must agree on: the two encodings must keep it.
        c.model.pairs = ("text_audio", "text_video", "text_image", "audio_video")
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
        raise ValueError(f"unknown variant {variant!r} of configs/bridging_align.py; expected tiny, cpu or full")
    return c
