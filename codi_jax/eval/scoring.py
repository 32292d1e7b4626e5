"""Shapes & Tones scores (shapes-and-tones.md, "What is scored"), computed on oracle-decoded outputs.

Attribute dicts hold names (color / shape / motion) and an int onset, as `shapes_tones.generate` gives
and the oracle returns; batches' int indices convert with `attributes_from_indices`. A decoded None
never matches.

  conditional_accuracy(inputs, output, targets, decoded)
      inputs carry the known attributes `targets`; scored: attributes the output modality carries AND
      some input carries. Reported overall, per attribute, and on seen / unseen (held-out) combinations.
  multi_condition_accuracy(conditions, output, decoded)
      inputs from different examples, {modality: targets}; an attribute is scored when the inputs that
      carry it agree on its value (where they disagree the intended answer is undefined: not scored).
  joint_coherence(decoded)
      outputs generated together, {modality: decoded}: per pair, the fraction of shared attributes on
      which the two agree; "onset_sync" for video + audio. Chance for independent outputs: CHANCE.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np

from codi_jax.data import shapes_tones as st
from codi_jax.eval.oracle import CARRIED

CHANCE = {"color": 1 / len(st.COLORS), "shape": 1 / len(st.SHAPES), "motion": 1 / len(st.MOTIONS),
          "onset": 1 / len(st.ONSETS)}


def attributes_from_indices(color, shape, motion=None, onset=None) -> list[dict]:
    """Batch index arrays ("color", "shape", "motion", "onset" int [B]) -> a list of B attribute dicts."""
    color, shape = np.atleast_1d(color), np.atleast_1d(shape)
    out = []
    for i in range(color.shape[0]):
        item = {"color": st.COLORS[int(color[i])], "shape": st.SHAPES[int(shape[i])]}
        if motion is not None:
            item["motion"] = st.MOTIONS[int(np.atleast_1d(motion)[i])]
        if onset is not None:
            item["onset"] = int(np.atleast_1d(onset)[i])
        out.append(item)
    return out


def _check_modality(modality: str) -> None:
    if modality not in CARRIED:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(CARRIED)}")


def _summary(rows: list[tuple[str, bool]]) -> dict:
    per_attribute = {}
    for name in st.ATTRIBUTES:
        hits = [ok for attr, ok in rows if attr == name]
        if hits:
            per_attribute[name] = float(np.mean(hits))
    return {"accuracy": float(np.mean([ok for _, ok in rows])) if rows else float("nan"),
            "per_attribute": per_attribute, "scored": len(rows)}


def _expected(conditions: Mapping[str, Sequence[Mapping]], index: int, output: str) -> dict:
    """Attributes the output should reproduce for example `index`: carried by the output and agreed on
    by every input that carries them."""
    expected = {}
    for name in CARRIED[output]:
        values = {conditions[m][index][name] for m in conditions if name in CARRIED[m]}
        if len(values) == 1:
            expected[name] = values.pop()
    return expected


def multi_condition_accuracy(conditions: Mapping[str, Sequence[Mapping]], output: str,
                             decoded: Sequence[Mapping]) -> dict:
    """Accuracy of outputs `decoded` (oracle dicts of the `output` modality) given several conditioning
    inputs, {input modality: its attribute dict per example}. Returns accuracy, per_attribute, scored
    (attribute slots), and the same restricted to "seen" / "unseen" color-shape combinations."""
    _check_modality(output)
    for modality, targets in conditions.items():
        _check_modality(modality)
        if len(targets) != len(decoded):
            raise ValueError(f"{len(targets)} {modality} targets for {len(decoded)} decoded outputs; expected equal")
    groups = {"all": [], "seen": [], "unseen": []}
    for i, out in enumerate(decoded):
        expected = _expected(conditions, i, output)
        rows = [(name, out.get(name) is not None and out.get(name) == value) for name, value in expected.items()]
        groups["all"] += rows
        if "color" in expected and "shape" in expected:
            held = st.is_held_out(expected["color"], expected["shape"])
            groups["unseen" if held else "seen"] += rows
    result = _summary(groups["all"])
    result["attributes"] = tuple(a for a in st.ATTRIBUTES if a in result["per_attribute"])
    for group in ("seen", "unseen"):
        if groups[group]:
            result[group] = _summary(groups[group])
    return result


def conditional_accuracy(inputs: str | Sequence[str], output: str, targets: Sequence[Mapping],
                         decoded: Sequence[Mapping]) -> dict:
    """Accuracy of outputs conditioned on input modalities of the same examples (attributes `targets`).

    E.g. image -> audio scores color and shape; text -> video scores color, shape, motion.
    """
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    return multi_condition_accuracy({m: targets for m in inputs}, output, decoded)


def joint_coherence(decoded: Mapping[str, Sequence[Mapping]]) -> dict:
    """Agreement between outputs generated together, {modality: oracle dicts}, example by example.

    Returns {"pairs": {"a+b": {"agreement", "per_attribute", "scored"}}, "agreement" (all pairs' slots
    pooled) and, with video and audio, "onset_sync" (fraction with equal decoded onsets)}.
    """
    modalities = list(decoded)
    for modality in modalities:
        _check_modality(modality)
    sizes = {len(v) for v in decoded.values()}
    if len(sizes) != 1:
        raise ValueError(f"joint outputs have different counts {sorted(sizes)}; expected one per example each")
    pairs, pooled = {}, []
    for a, b in itertools.combinations(modalities, 2):
        shared = [name for name in st.ATTRIBUTES if name in CARRIED[a] and name in CARRIED[b]]
        rows = [(name, x.get(name) is not None and x.get(name) == y.get(name))
                for x, y in zip(decoded[a], decoded[b]) for name in shared]
        summary = _summary(rows)
        pairs[f"{a}+{b}"] = {"agreement": summary["accuracy"], "per_attribute": summary["per_attribute"],
                             "scored": summary["scored"]}
        pooled += rows
    result = {"pairs": pairs, "agreement": _summary(pooled)["accuracy"]}
    if "video" in decoded and "audio" in decoded:
        result["onset_sync"] = float(np.mean([v["onset"] is not None and v["onset"] == a["onset"]
                                              for v, a in zip(decoded["video"], decoded["audio"])]))
    return result
