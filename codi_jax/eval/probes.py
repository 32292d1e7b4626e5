"""Stage probes: the capability each training stage exists for, measured on held-out examples while it trains.

A probe is a config entry (`config.probe`: kind, every_steps, num_examples, ...). Its examples are the first
`num_examples` of the validation split of the stage's data (no shuffle, so every run and every step sees the
same ones); the stage turns them into outputs (`Stage.probe_outputs`, jitted), and the probe reads the outputs
back with the Shapes & Tones oracle and scores them against the examples' attributes:

  reconstruction  autoencoders: encode -> decode read back per modality (image and video through the image VAE,
                  audio through the mel VAE and the mel inversion sampling uses, text through Optimus' greedy
                  decode); every attribute the modality carries
  retrieval       bridging_align: for each pair a_b, every example's a-encoding retrieves its nearest b-encoding
                  among the probe's examples (and b retrieves a); correct when the retrieved example shares the
                  query's values of the attributes both modalities carry (text_audio: colour and shape;
                  audio_video: colour, shape and onset)
  generation      each ldm: outputs generated from each condition modality, conditional accuracy
  joint           latent_align: text -> video + audio generated jointly and independently (same noise):
                  onset agreement, attribute agreement and each output's accuracy, both ways; and what each
                  output's environment encoder V(z_t) carries: every attribute of the modality read from the
                  encodings of the probe's own clips by leave-one-out nearest class centroid, at a few t

The trainer writes the scores to TensorBoard (`probe/...`), the progress line and WORKDIR/probes.json.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Mapping, Sequence

import numpy as np

from codi_jax.data import shapes_tones as st
from codi_jax.data import griffin_lim
from codi_jax.eval import oracle, scoring

KINDS = ("reconstruction", "retrieval", "generation", "joint")
# Mel inversion iterations for probe audio (the sampling pipeline's default).
GRIFFIN_LIM_ITERATIONS = 8


def attributes_of(batch: Mapping) -> list[dict]:
    """The examples' attribute dicts from a batch's index arrays."""
    return scoring.attributes_from_indices(batch["color"], batch["shape"], batch["motion"], batch["onset"])


def waves_from_mels(mels, num_samples: int) -> np.ndarray:
    """Log-mels [B, T, 64] -> 16 kHz waves [B, num_samples] by the mel inversion sampling uses without a vocoder."""
    return griffin_lim.mels_to_waves(mels, num_samples, GRIFFIN_LIM_ITERATIONS)


def read_back(modality: str, outputs) -> list[dict]:
    """Oracle attributes of a batch of outputs: image [B,H,W,3] / video [B,F,H,W,3] in [0, 1], audio waves
    [B, N] at 16 kHz, or a list of texts."""
    if modality in ("image", "video"):
        return [oracle.decode(modality, x, value_range=(0.0, 1.0)) for x in np.asarray(outputs)]
    if modality == "audio":
        return [oracle.decode_audio(x) for x in np.asarray(outputs)]
    return [oracle.decode_text(x) for x in outputs]


def _flat(prefix: str, summary: Mapping) -> dict[str, float]:
    out = {f"{prefix}/accuracy": summary["accuracy"]}
    out.update({f"{prefix}/{name}": value for name, value in summary["per_attribute"].items()})
    return out


def score_reconstruction(outputs: Mapping[str, object], targets: Sequence[Mapping]) -> dict[str, float]:
    """{modality, or "modality:path" for a second route (audio:vocoder): reconstructions} -> accuracy per
    modality and attribute."""
    scores = {}
    for label, out in outputs.items():
        modality = label.split(":")[0]
        summary = scoring.conditional_accuracy(modality, modality, targets, read_back(modality, out))
        scores.update(_flat(label, summary))
    return _with_mean(scores)


def shared_attributes(a: str, b: str) -> tuple[str, ...]:
    return tuple(name for name in st.ATTRIBUTES if name in oracle.CARRIED[a] and name in oracle.CARRIED[b])


def score_retrieval(embeddings: Mapping[str, np.ndarray], targets: Sequence[Mapping],
                    pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Top-1 retrieval both ways for each pair, by cosine similarity over the examples."""
    scores = {}
    for a, b in pairs:
        keys = shared_attributes(a, b)
        classes = [tuple(t[k] for k in keys) for t in targets]
        ea, eb = (_unit(embeddings[m]) for m in (a, b))
        hits = []
        for query, candidates in ((ea, eb), (eb, ea)):
            nearest = np.argmax(query @ candidates.T, axis=1)
            hits += [classes[i] == classes[j] for i, j in enumerate(nearest)]
        scores[f"{a}_{b}/top1"] = float(np.mean(hits))
    return _with_mean(scores, suffix="/top1")


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score_generation(outputs: Mapping[str, Mapping[str, object]], targets: Sequence[Mapping]) -> dict[str, float]:
    """{condition modality: {output modality: outputs}} -> conditional accuracy per cell and attribute."""
    scores = {}
    for condition, generated in outputs.items():
        for modality, out in generated.items():
            summary = scoring.conditional_accuracy(condition, modality, targets, read_back(modality, out))
            scores.update(_flat(f"{condition}->{modality}", summary))
    return _with_mean(scores)


def score_joint(outputs: Mapping[str, Mapping[str, object]], targets: Sequence[Mapping],
                condition: str = "text") -> dict[str, float]:
    """{"joint" | "independent": {modality: outputs}} of the same conditions and noise -> onset and attribute
    agreement of each generation, and each output's conditional accuracy; an "env" entry {"modality@t":
    encodings [B, ...]} -> what the encodings carry (score_env)."""
    outputs = dict(outputs)
    scores = score_env(outputs.pop("env", {}), targets)
    for name, generated in outputs.items():
        decoded = {m: read_back(m, out) for m, out in generated.items()}
        coherence = scoring.joint_coherence(decoded)
        scores[f"{name}/agreement"] = coherence["agreement"]
        if "onset_sync" in coherence:
            scores[f"{name}/onset_agreement"] = coherence["onset_sync"]
        for m, d in decoded.items():
            scores[f"{name}/{m}_accuracy"] = scoring.conditional_accuracy(condition, m, targets, d)["accuracy"]
    return scores


def score_env(encodings: Mapping[str, object], targets: Sequence[Mapping]) -> dict[str, float]:
    """{"modality@t": encodings [B, ...]} -> "env/modality@t/attribute": the fraction of examples whose nearest
    class centroid (cosine; the example itself left out of its class) has its value, for each attribute the
    modality carries. 1 / (number of values) is chance; an attribute V does not carry stays there."""
    scores = {}
    for label, x in encodings.items():
        x = _unit(x)
        for name in oracle.CARRIED[label.split("@")[0]]:
            values = np.array([t[name] for t in targets])
            classes = sorted(set(values.tolist()))
            onehot = (values[:, None] == np.array(classes)[None, :]).astype(np.float64)
            # Each example's own class centroid without it (a sum: only its direction counts for the cosine); a
            # class of one has no centroid left for it.
            own = onehot.astype(bool)
            centroids = (x.T @ onehot).T[None, :, :] - own[:, :, None] * x[:, None, :]
            similarity = np.einsum("bd,bcd->bc", x, centroids / np.maximum(
                np.linalg.norm(centroids, axis=-1, keepdims=True), 1e-12))
            similarity[(onehot.sum(0)[None, :] - own) == 0] = -np.inf
            predicted = np.array(classes)[np.argmax(similarity, axis=1)]
            scores[f"env/{label}/{name}"] = float(np.mean(predicted == values))
    return scores


def _with_mean(scores: dict[str, float], suffix: str = "/accuracy") -> dict[str, float]:
    overall = [v for k, v in scores.items() if k.endswith(suffix) and np.isfinite(v)]
    if overall:
        scores["accuracy"] = float(np.mean(overall))
    return scores


SCORERS: dict[str, Callable] = {"reconstruction": score_reconstruction, "retrieval": score_retrieval,
                                "generation": score_generation, "joint": score_joint}


class Probe:
    """Runs a stage's probe: `outputs_fn(params, batch, rng)` (jitted here) on the fixed examples,
    `finish(outputs)` on the host (e.g. mels -> waves, token ids -> texts), then the kind's scorer."""

    def __init__(self, kind: str, batch: Mapping, outputs_fn: Callable, *, finish: Callable | None = None,
                 **score_kwargs):
        if kind not in KINDS:
            raise ValueError(f"unknown probe kind {kind!r}; expected one of {KINDS}")
        import jax

        self.kind, self.batch, self.outputs_fn = kind, dict(batch), jax.jit(outputs_fn)
        self.finish = finish or (lambda outputs: outputs)
        self.targets = attributes_of(batch)
        self.score_kwargs = score_kwargs

    def __call__(self, params, rng) -> dict[str, float]:
        import jax

        outputs = self.finish(jax.device_get(self.outputs_fn(params, self.batch, rng)))
        return SCORERS[self.kind](outputs, self.targets, **self.score_kwargs)


class ProbeLog:
    """WORKDIR/probes.json: every probe result of a run as [{"step": s, "scores": {...}}], rewritten atomically
    so an interrupted run keeps what it measured (a resumed run appends; a step measured again replaces)."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / "probes.json"
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else []

    def add(self, step: int, scores: Mapping[str, float]) -> None:
        self.entries = [e for e in self.entries if e["step"] != step]
        self.entries.append({"step": int(step), "scores": {k: float(v) for k, v in scores.items()}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.entries, indent=1) + "\n")
        os.replace(partial, self.path)

    def latest(self) -> dict[str, float]:
        return dict(self.entries[-1]["scores"]) if self.entries else {}
