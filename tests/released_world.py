"""A folder laid out as the README's "From the released weights" commands expect it, on tiny stand-ins of the
four released files (codi_jax.convert.standins): checkpoints/ (and checkpoints_fp16/), tokenizer folders small
enough for the fixture CLIP and BERT, and, when asked, Shapes & Tones records for latent alignment's pairs under
data/. Shared by the conversion tests and the notebook test."""
import json
import pathlib

from codi_jax.convert import standins


def make(root: pathlib.Path, goldens_dir: pathlib.Path, records: bool = True) -> pathlib.Path:
    sds = standins.state_dicts(goldens_dir)
    standins.save(root / "checkpoints", sds)
    standins.save(root / "checkpoints_fp16", sds, half=True)
    clip = root / "tokenizers" / "clip-vit-large-patch14"
    clip.mkdir(parents=True)
    (clip / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (clip / "merges.txt").write_text("#version: 0.2\n")
    bert = root / "tokenizers" / "optimus-bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]))
    if records:
        from data_pipelines.shapes_tones.shapes_tones_dataset_builder import prepare

        prepared = prepare(str(root / "prepared"), 8, 32)
        (root / "data").mkdir()
        for pair in ("text_image", "text_audio", "audio_video"):
            (root / "data" / pair).symlink_to(prepared)
    return root
