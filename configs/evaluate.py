"""The paper's evaluation tables for a checkpoint: `python -m codi_jax.evaluate --config
configs/evaluate.py:<task> --checkpoint DIR [--out DIR] [--config.key=value ...]`.

Tasks (numbers to compare with: ../shared/codi-reference.md §12):
  text_image    COCO captions -> images: FID and IS (InceptionV3), CLIP score
  text_video    MSR-VTT captions -> videos: CLIPSIM (add FVD with --config.metrics=clipsim,fvd: I3D)
  text_audio    AudioCaps captions -> audio: FD, IS, KL (PANNs CNN14), FAD (VGGish)
  image_text    COCO images -> captions: BLEU-4, METEOR, CIDEr
  audio_text    AudioCaps audio -> captions: SPIDEr, CIDEr (SPICE needs CoreNLP's jars, see captioning.py)
  video_text    MSR-VTT videos -> captions: BLEU-4, METEOR, CIDEr
  multi_image   any -> image: FID from text, audio, text + audio
  multi_video   any -> video: CLIPSIM from text, text + audio, text + image, text + audio + image
  joint         joint-generation coherence: cosine similarity of CLIP / CLAP embeddings between the
                outputs generated together (SIM-IT, SIM-AT, SIM-VT, SIM-VA), joint against independent
  shapes_tones  the Shapes & Tones test split generated on the fly: FID / FAD / CLIPSIM of generated
                against real test examples next to the oracle's accuracies

Data: `data.dataset` "records" reads `data.path` (a directory in codi_jax.data.records' schema, prepared
as data_pipelines/README.md says), split `data.split`; "shapes_tones" generates examples. Records that
share a key (`data.group_pattern`, a regex whose first group is the key, e.g. "^(.*)-[0-9]+$" for
"<clip>-<k>" ids) are one example whose captions are all references.

Weights of the metric networks load from the local files under `weights` (README: which task needs
which); a missing one stops the run with one line naming it. `random_metric_weights=True` gives them
random weights instead (tests, timing: the numbers then mean nothing). Generation uses the sampling
config `sample_config` with weights from --checkpoint (or all random with --random-init).
"""
from ml_collections import ConfigDict

TASKS = ("text_image", "text_video", "text_audio", "image_text", "audio_text", "video_text", "multi_image",
         "multi_video", "joint", "shapes_tones")
METRICS = {
    "text_image": ("fid", "is", "clip_score"),
    "text_video": ("clipsim",),
    "text_audio": ("fd", "is_audio", "kl", "fad"),
    "image_text": ("bleu4", "meteor", "cider"),
    "audio_text": ("spider", "cider"),
    "video_text": ("bleu4", "meteor", "cider"),
    "multi_image": ("fid",),
    "multi_video": ("clipsim",),
    "joint": ("coherence",),
    "shapes_tones": ("fid", "fad", "clipsim", "oracle"),
}


def get_config(task: str = "shapes_tones") -> ConfigDict:
    if task not in TASKS:
        raise ValueError(f"unknown evaluation task {task!r}; expected one of {', '.join(TASKS)}")
    c = ConfigDict()
    c.task = task
    c.metrics = METRICS[task]
    c.sample_config = "configs/sample.py:full"
    c.data = ConfigDict(dict(
        dataset="shapes_tones" if task == "shapes_tones" else "records", path="", split="test",
        num_examples=200 if task == "shapes_tones" else 5000, group_pattern="",
        # Real and generated media are brought to one size before the metric networks see them.
        image_size=256, video_frames=8, audio_seconds=10.0, shapes_tones_resolution=32))
    c.generation = ConfigDict(dict(sampler="ddim", steps=50, guidance=7.5, seed=0, chunk=64))
    c.weights = ConfigDict(dict(
        inception="weights/pt_inception-2015-12-05-6726825d.pth",
        panns="weights/Cnn14_16k_mAP=0.438.pth",
        vggish="weights/vggish-10086976.pth",
        i3d="weights/i3d_pretrained_400.pt"))
    c.random_metric_weights = False
    # FID's InceptionV3 features: 2048 (the standard) or pytorch-fid's --dims 64 / 192 / 768.
    c.fid_dims = 2048
    # The inception score's splits (torch-fidelity and AudioLDM use 10).
    c.is_splits = 10
    # Examples per compiled feature-extraction call, split over the mesh's data axis.
    c.feature_batch_size = 32
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Fitted statistics of the real examples, keyed by weights, data and preprocessing.
    c.cache_dir = "~/.cache/codi_jax/eval_stats"
    if task == "shapes_tones":
        c.sample_config = "configs/sample.py:cpu"
        c.data.image_size = 32
        c.data.audio_seconds = 1.024
        c.generation.sampler = "dpmpp_2m"
        c.generation.steps = 20
    return c
