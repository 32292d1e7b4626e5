"""Captioning metrics: our wrapper gives the COCO caption evaluation package's numbers on fixed captions."""
import shutil

import pytest

from codi_jax.eval.metrics import captioning

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs a Java runtime")

REFERENCES = {
    "0": ["A red circle moves to the left.", "a red circle sliding left"],
    "1": ["A blue square appears at the start.", "blue square shows up early", "a square, blue, at frame one"],
    "2": ["a green triangle moving up", "The green triangle rises."],
    "3": ["a yellow star that does not move"],
}
PREDICTIONS = {"0": "a red circle moving left", "1": "a blue square appears", "2": "a green triangle falls down",
               "3": "a purple cat"}


def _reference_package(predictions, references):
    """pycocoevalcap called the way its own COCOEvalCap does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in predictions.items()})
    return {"bleu4": Bleu(4).compute_score(gts, res)[0][3], "meteor": Meteor().compute_score(gts, res)[0],
            "rouge_l": Rouge().compute_score(gts, res)[0], "cider": Cider().compute_score(gts, res)[0]}


def test_equal_to_the_reference_package():
    ours = captioning.caption_metrics(PREDICTIONS, REFERENCES, ("bleu4", "meteor", "rouge_l", "cider"))
    reference = _reference_package(PREDICTIONS, REFERENCES)
    assert ours == pytest.approx(reference, rel=1e-12)
    # The numbers carry information: a perfect caption set scores higher on every metric.
    perfect = captioning.caption_metrics({k: v[0] for k, v in REFERENCES.items()}, REFERENCES,
                                         ("bleu4", "rouge_l", "cider"))
    assert all(perfect[m] > ours[m] for m in perfect)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="prediction '9' has no reference captions"):
        captioning.caption_metrics({"9": "x"}, REFERENCES)
    with pytest.raises(ValueError, match="unknown metric 'bleu5'"):
        captioning.caption_metrics(PREDICTIONS, REFERENCES, ("bleu5",))


def test_spice_without_corenlp_names_the_missing_jar(monkeypatch, tmp_path):
    monkeypatch.setattr(captioning, "spice_lib", lambda: tmp_path)
    with pytest.raises(captioning.MissingResourceError, match="stanford-corenlp-3.6.0.jar"):
        captioning.caption_metrics(PREDICTIONS, REFERENCES, ("spider",))
