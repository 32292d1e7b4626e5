"""Stage 1 (autoencoders): image KL-VAE, audio mel VAE, HiFi-GAN vocoder, Optimus text VAE.

    python -m codi_jax.train --config configs/autoencoders.py:cpu --workdir workdirs/autoencoders

Trains every component in model.components on each batch of one Shapes & Tones objective that
carries image, audio and text; WORKDIR/checkpoints then hold `image_vae`, `audio_vae`, `vocoder`
and `optimus`, which the ldm stages read through `config.init_from.autoencoders = WORKDIR`.
TensorBoard shows per-component losses (l1, kl, mel_l1, stft, ce_per_token; with the GAN on also
g_loss, d_loss, d_weight, logits_real / logits_fake, feature_matching) and image / audio
reconstructions. Train a single component with e.g. `--config.model.components=image_vae`.

Variants:
  tiny  tests / CI: tiny networks, 16 px images, 0.256 s audio, 30 steps (the summed loss falls).
        GAN-free; --config.losses.adversarial=True adds tiny discriminators from step 10.
  quickstart  the tiny run README command 1 builds first (configs/latent_align.py): 60 steps, the image VAE
        on the squared error as cpu.
  cpu   the Shapes & Tones run: the CPU networks (codi_jax/train/defaults.py) at 32 px and 1.024 s audio:
        the audio VAE, 500 steps, carrying on Optimus and the image VAE (init_from.autoencoders = a
        cpu_text workdir); no vocoder (the run's sampling inverts mels with Griffin-Lim), GAN-free
        (--config.losses.adversarial=True: tiny discriminators from step 1000).
  cpu_image the image VAE alone (squared error, see the variant), 800 steps at lr 2e-3.
  cpu_text  Optimus alone at the cpu settings with word dropout, 3000 steps, carrying on the image VAE
        (init_from.autoencoders = a cpu_image workdir).
  full  the released sizes (SD kl-f8, AudioLDM VAE, HiFi-GAN 16k, Optimus BERT/GPT-2) on prepared
        records (set data.objectives.image_audio_text.path and real tokenizer paths), with the originals'
        adversarial losses and discriminators (LDM's PatchGAN from step 50001, HiFi-GAN's MPD + MSD from
        the start) and LDM's Adam (b1 0.5, b2 0.9, no weight decay, no clipping). The LPIPS perceptual
        term is OFF unless losses.lpips_path names a local LPIPS weights file (nothing is downloaded).

losses (the stage reads these; `model.<component>_disc` picks the discriminator presets of
codi_jax.models.discriminators.CONFIGS):
  adversarial        train against the discriminators (image / audio VAE, vocoder; Optimus has none)
  disc_start         first step of the VAEs' GAN terms (LDM and AudioLDM: 50001); before it they are 0
  disc_weight        LDM's discriminator weight on the adaptive generator weight (0.5 in SD's kl-f8)
  vocoder_disc_start first step of the vocoder's GAN terms (HiFi-GAN: 0, from the start)
  feature_weight     HiFi-GAN's feature-matching weight (2)
  lpips_path         local LPIPS weights (.safetensors, or a torch state dict loadable with weights_only;
                     keys as taming's / lpips' LPIPS module, optionally under a prefix such as LDM
                     checkpoints' `loss.perceptual_loss.`); "" = no perceptual term
  perceptual_weight  LDM's LPIPS weight in the reconstruction loss (1.0), used when lpips_path is set
With optim.weight_decay > 0 AdamW still shrinks the discriminator kernels before disc_start (their
gradient is exactly zero there); the full variant has no weight decay, as LDM's Adam.
"""
import ml_collections

from codi_jax.train.defaults import (CPU_AUDIO_FRAMES, CPU_RESOLUTION, base_config, component, model_components,
                                     probe_config, shapes_tones_data)

COMPONENTS = ("image_vae", "audio_vae", "vocoder", "optimus")


def _losses(audio_frames: int, adversarial: bool, disc_start: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "kl_weight": 1e-6,                # LDM's KL weight for the VAEs
        # Pixel / mel reconstruction error per VAE: LDM's "l1" (with LPIPS in the originals), or "l2".
        "reconstruction": {"image_vae": "l1", "audio_vae": "l1"},
        "kl_warmup_steps": 100,           # linear warm-up of the VAE KL weight and the Optimus beta
        "audio_frames": audio_frames,     # mel frames of the audio VAE's fbank (a multiple of its downsampling)
        "mel_weight": 45.0,               # HiFi-GAN's mel L1 weight
        "stft_resolutions": ((512, 128), (1024, 256), (256, 64)),
        "optimus_beta": 1.0,
        "optimus_free_bits": 0.05,        # Optimus' dimension-wise KL threshold (lambda)
        "optimus_word_dropout": 0.0,      # decoder inputs replaced by <PAD> with this probability (Optimus: none)
        "adversarial": adversarial,
        "disc_start": disc_start,
        "disc_weight": 0.5,
        "vocoder_disc_start": 0,
        "feature_weight": 2.0,
        "lpips_path": "",
        "perceptual_weight": 1.0,
    })


def get_config(variant: str = "tiny"):
    if variant in ("cpu_text", "cpu_image"):
        return _cpu_alone(variant)
    c = base_config("autoencoders", "./workdirs/autoencoders")
    c.model.components = COMPONENTS
    c.model.carried = ()              # components read from init_from.autoencoders and kept untrained
    c.init_from.autoencoders = ""
    if variant in ("tiny", "quickstart", "cpu"):
        for name, preset in model_components(COMPONENTS, "cpu" if variant == "cpu" else "tiny").items():
            c.model[name] = preset
        c.model.image_vae_disc = component("tiny")
        c.model.audio_vae_disc = component("audio_tiny")
        c.model.vocoder_disc = component("hifigan_tiny")
    if variant in ("tiny", "quickstart"):
        c.data = shapes_tones_data(["image_audio_text"], resolution=16, audio_samples=4096,
                                   text_lengths={"bert": 16, "gpt2": 16})
        c.losses = _losses(audio_frames=24, adversarial=False, disc_start=10)
        c.losses.kl_warmup_steps = 10
        c.total_steps, c.batch_size = 30, 8
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 30, 30
        c.optim.learning_rate, c.optim.warmup_steps = 2e-3, 3
        c.ema_decay = 0.0
        if variant == "quickstart":  # what README command 1 builds first; l2 keeps the object's colour (see cpu)
            c.losses.reconstruction.image_vae = "l2"
            c.total_steps = c.checkpoint_every_steps = 60
            c.sample_every_steps = 1000
    elif variant == "cpu":
        c.data = shapes_tones_data(["image_audio_text"], resolution=CPU_RESOLUTION, audio_samples=16384,
                                   text_lengths={"bert": 16, "gpt2": 16})
        c.losses = _losses(audio_frames=CPU_AUDIO_FRAMES, adversarial=False, disc_start=1000)
        # No vocoder: minutes of GAN-free CPU training leave a HiFi-GAN that loses the tones' harmonics, so
        # the run's sampling inverts mels with Griffin-Lim (configs/sample.py:cpu, mel_inversion).
        # Optimus and the image VAE come from the cpu_text -> cpu_image runs (init_from.autoencoders): trained
        # together here, the shared global-norm clipping held the image VAE's shapes back (read back 17-31 %
        # vs 94 % alone at lr 2e-3), and Optimus needs ~6x the steps at ~1 % of the VAEs' cost per step.
        c.model.components, c.model.carried = ("audio_vae",), ("optimus", "image_vae")
        # Shapes & Tones pictures are ~92 % black: L1 without LPIPS spends its gradient on the background and
        # the VAE settles on a grey blob at the right place (colour read back 35 %); the squared error weighs
        # the object's large errors and brings the colour back (100 % after 250 steps).
        c.losses.reconstruction.image_vae = "l2"
        c.total_steps, c.batch_size = 500, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 25, 500, 500
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 30
        # Read-back through encode -> decode (audio through Griffin-Lim, as sampling) of each trained component.
        c.probe = probe_config("reconstruction", every_steps=250, num_examples=64)
    elif variant == "full":
        c.model.image_vae = component("full")
        c.model.audio_vae = component("audio_full")
        c.model.vocoder = component("full")
        c.model.optimus = component("full")
        c.model.image_vae_disc = component("full")
        c.model.audio_vae_disc = component("audio_full")
        c.model.vocoder_disc = component("hifigan_full")
        c.data = shapes_tones_data(["image_audio_text"], resolution=256, audio_samples=163840,
                                   text_lengths={"bert": 64, "gpt2": 64})
        records = c.data.objectives.image_audio_text
        records.dataset, records.path = "records", ""   # a prepared records directory (data_pipelines/)
        c.losses = _losses(audio_frames=1024, adversarial=True, disc_start=50001)
        c.total_steps, c.batch_size = 500_000, 256
        c.optim.learning_rate, c.optim.warmup_steps = 4.5e-6 * 256, 5000
        c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.grad_clip_norm = 0.5, 0.9, 0.0, 0.0
        c.dtype = "bfloat16"
        c.mesh.data, c.mesh.fsdp = -1, 1
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/autoencoders.py; expected tiny, quickstart, "
                         "cpu, cpu_text, cpu_image or full")
    return c


def _cpu_alone(variant: str):
    """The cpu run's components trained on their own before `cpu` carries them on: cpu_image (the image VAE),
    then cpu_text (Optimus, carrying the image VAE from cpu_image through init_from.autoencoders)."""
    c = get_config("cpu")
    if variant == "cpu_text":
        # At 500 steps the CPU Optimus reconstructs the caption template but not its attributes; 3000 steps
        # (about a minute) with 2 nats of free bits per latent dimension (its 16 must carry ~5.3 nats:
        # color, shape, motion, template) read back all three on 210 of 210 seen test captions. Without word
        # dropout the decoder follows the training captions' word order over z and reads back the 46 unseen
        # colour-shape pairs at 57 % (colour 37 %, shape 48 %); with half the decoder inputs dropped, 92 %.
        c.model.components, c.model.carried = ("optimus",), ("image_vae",)
        c.losses.optimus_free_bits = 2.0
        c.losses.optimus_word_dropout = 0.5
        c.total_steps = c.checkpoint_every_steps = c.sample_every_steps = 3000
        c.log_every_steps = 250
    else:
        # Shapes appear as the squared error falls from ~0.01 to ~0.004: 500 steps of lr 2e-3 decayed to zero
        # stop at 0.0087 (shape read back 56 %), 800 at 0.0027 (98 % on 96 test pictures).
        c.model.components, c.model.carried = ("image_vae",), ()
        c.optim.learning_rate = 2e-3
        c.total_steps = c.checkpoint_every_steps = c.sample_every_steps = 800
    return c
