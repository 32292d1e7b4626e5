"""Captioning metrics through the COCO caption evaluation package (pycocoevalcap): BLEU-1..4, METEOR,
ROUGE-L, CIDEr(-D), and SPICE / SPIDEr (the audio-captioning score, the mean of CIDEr and SPICE).

Captions are tokenised by the package's PTB tokenizer, as the COCO server does. The tokenizer, METEOR
and SPICE run Java programs shipped with the package, so a Java runtime must be on PATH (Debian /
Ubuntu: `apt-get install default-jre-headless`). SPICE also needs Stanford CoreNLP 3.6.0, which the
package downloads on first use; here nothing downloads, so its two jars must already be in the
package's spice/lib folder (`MissingResourceError` names them).
"""
from __future__ import annotations

import pathlib
import shutil
from typing import Mapping, Sequence

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice", "spider")
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class MissingResourceError(RuntimeError):
    """Something a metric needs outside Python (Java, SPICE's CoreNLP jars), named in one line."""


def spice_lib() -> pathlib.Path:
    from pycocoevalcap.spice import spice

    return pathlib.Path(spice.__file__).parent / "lib"


def _check_java() -> None:
    if shutil.which("java") is None:
        raise MissingResourceError("captioning metrics need a Java runtime on PATH (pycocoevalcap's tokenizer, "
                                   "METEOR and SPICE are Java programs); install e.g. default-jre-headless")


def _check_spice() -> None:
    lib = spice_lib()
    missing = [name for name in SPICE_JARS if not (lib / name).is_file()]
    if missing:
        raise MissingResourceError(f"SPICE needs Stanford CoreNLP 3.6.0: expected {lib / missing[0]} (the package "
                                   "would download it; put stanford-corenlp-3.6.0.jar and its -models.jar there)")


def _check_inputs(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not predictions:
        raise ValueError("captioning: no predictions")
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise ValueError(f"captioning: prediction {missing[0]!r} has no reference captions")
    empty = [k for k in predictions if not references[k]]
    if empty:
        raise ValueError(f"captioning: example {empty[0]!r} has an empty list of reference captions")


def caption_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    metrics: Sequence[str] = ("bleu4", "meteor", "rouge_l", "cider")) -> dict[str, float]:
    """Corpus-level scores of one predicted caption per example against its reference captions, keyed
    by example id; values on the package's scale (BLEU, METEOR, ROUGE-L, SPICE in [0, 1]; CIDEr ~[0, 10])."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"captioning: unknown metric {unknown[0]!r}; expected some of {', '.join(METRICS)}")
    _check_inputs(predictions, references)
    _check_java()
    wanted = set(metrics)
    if wanted & {"spice", "spider"}:
        _check_spice()
    ids = sorted(predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in ids})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in ids})
    out: dict[str, float] = {}
    if wanted & {"bleu1", "bleu2", "bleu3", "bleu4"}:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"bleu{n + 1}": float(bleu[n]) for n in range(4)})
    if "meteor" in wanted:
        out["meteor"] = float(Meteor().compute_score(gts, res)[0])
    if "rouge_l" in wanted:
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if wanted & {"cider", "spider"}:
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    if wanted & {"spice", "spider"}:
        from pycocoevalcap.spice.spice import Spice

        out["spice"] = float(Spice().compute_score(gts, res)[0])
        out["spider"] = (out["cider"] + out["spice"]) / 2
    return {k: v for k, v in out.items() if k in wanted}
