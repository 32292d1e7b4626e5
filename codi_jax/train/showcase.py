"""What a finished latent-alignment run can do, shown (`config.showcase`: the captions to show it with).

For each caption, from the run's workdir through the sampling pipeline (the networks `python -m codi_jax.sample
--checkpoint WORKDIR` would build): text -> image, text -> video + audio generated jointly, and the generated
image -> text, each into WORKDIR/samples/<n>_<what>/ (image.png, video.gif + video.mp4, audio.wav, text.txt and
the request.json that replays it). Then the joint probe's last scores (WORKDIR/probes.json) as a table: text ->
video + audio generated jointly against each output generated alone from the same noise, read back by the
Shapes & Tones oracle.
"""
from __future__ import annotations

import json
import pathlib
import shutil

from codi_jax import sampling

# Columns of the table: (probe score suffix, heading).
COLUMNS = (("onset_agreement", "onset agreement"), ("agreement", "attribute agreement"),
           ("video_accuracy", "video accuracy"), ("audio_accuracy", "audio accuracy"))
CHANCE_ONSET = 0.25  # four onsets
MARKER = "showcase.json"  # the step and captions a samples folder was made from


def requests(captions, sampler: str, steps: int, guidance: float):
    """(folder name, request) pairs that need no generated input: per caption, text -> image and text -> video +
    audio (joint)."""
    common = dict(sampler=sampler, steps=steps, guidance=guidance)
    pairs = []
    for index, caption in enumerate(captions):
        pairs.append((f"{index}_text_to_image", sampling.Request(outputs=("image",), text=caption, seed=index,
                                                                   **common)))
        pairs.append((f"{index}_text_to_video_audio", sampling.Request(outputs=("video", "audio"), text=caption,
                                                                         seed=index, **common)))
    return pairs


def written_for(workdir) -> int | None:
    """The checkpoint step WORKDIR/samples was generated from, or None."""
    try:
        return json.loads((pathlib.Path(workdir) / "samples" / MARKER).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def write_samples(workdir, step: int, captions, *, sampler: str, steps: int, guidance: float) -> pathlib.Path:
    """Generate the showcase of checkpoint `step` into WORKDIR/samples; returns that folder. It is written beside
    and moved in at the end, so the folder always holds one whole showcase."""
    config = sampling.config_for_checkpoint(workdir)
    pipe = sampling.CoDiPipeline.from_checkpoint(workdir, config)
    final = pathlib.Path(workdir) / "samples"
    out = final.with_name("samples.partial")
    shutil.rmtree(out, ignore_errors=True)
    pairs = requests(captions, sampler, steps, guidance)
    results = pipe.generate_batch([request for _, request in pairs], progress=False)
    for (name, request), outputs in zip(pairs, results):
        pipe.save(out / name, outputs, request)
    # The generated pictures described back in words (image -> text).
    images = [(name.split("_", 1)[0], outputs["image"]) for (name, _), outputs in zip(pairs, results)
              if "image" in outputs]
    back = [sampling.Request(outputs=("text",), image=image, sampler=sampler, steps=steps, guidance=guidance,
                             seed=int(index)) for index, image in images]
    for (index, _), request, outputs in zip(images, back, pipe.generate_batch(back, progress=False)):
        pipe.save(out / f"{index}_image_to_text", outputs, request)
    (out / MARKER).write_text(json.dumps({"step": int(step), "captions": list(captions)}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    return final


def table(scores: dict, num_examples: int) -> str:
    """The joint probe's scores as a text table, joint against independent."""
    width = max(len(heading) for _, heading in COLUMNS) + 2
    lines = [f"text -> video + audio on {num_examples} validation captions, read back by the oracle "
             f"(onset agreement by chance: {CHANCE_ONSET:.0%})",
             "".ljust(13) + "".join(heading.rjust(width) for _, heading in COLUMNS)]
    for generation in ("joint", "independent"):
        cells = [scores.get(f"{generation}/{suffix}") for suffix, _ in COLUMNS]
        lines.append(generation.ljust(13) + "".join(("–" if v is None else f"{v:.1%}").rjust(width) for v in cells))
    return "\n".join(lines)
