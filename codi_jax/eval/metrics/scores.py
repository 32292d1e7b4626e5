"""Scores on classifier outputs and embeddings: inception score, KL divergence of paired predictions,
CLIP score / CLIPSIM / embedding cosine similarity.

Inception score and KL follow AudioLDM's evaluation (`audioldm_eval.metrics.isc` / `kl`, which take the
inception score from torch-fidelity): the same splits, shuffle and epsilon, computed in numpy since the
references need torch at run time; tests/test_metrics_scores.py checks both against the reference
functions' own outputs.
"""
from __future__ import annotations

import numpy as np
from scipy import special

# torch-fidelity's and AudioLDM's defaults.
IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020
# AudioLDM's KL adds it to the predicted probabilities before the log.
KL_EPS = 1e-6


def inception_score(logits, splits: int = IS_SPLITS, shuffle: bool = True, seed: int = IS_SHUFFLE_SEED) -> dict:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` chunks of the (seeded-shuffled) samples: mean and std.

    `logits` [N, C] are pre-softmax class scores (InceptionV3's unbiased logits, PANNs' logits)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(f"inception score: expected logits [N >= {splits}, C], got shape {logits.shape}")
    n = logits.shape[0]
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    log_p = special.log_softmax(logits, axis=1)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        q = p[chunk].mean(axis=0, keepdims=True)
        kl = (p[chunk] * (log_p[chunk] - np.log(q))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores))}


def _kl_sum(target, predicted) -> float:
    """sum target * (log target - log(predicted + eps)), 0 where target is 0 (torch's kl_div, sum)."""
    return float(np.sum(special.xlogy(target, target) - target * np.log(predicted + KL_EPS)))


def kl_divergence(generated_logits, reference_logits) -> dict:
    """KL(reference || generated) per pair, summed over classes, averaged over pairs, with the class
    probabilities taken by softmax (AudioGen's form) and by per-class sigmoid (multi-label form).
    Row i of both arrays must come from the same example."""
    gen, ref = np.asarray(generated_logits, np.float64), np.asarray(reference_logits, np.float64)
    if gen.shape != ref.shape or gen.ndim != 2:
        raise ValueError(f"KL: expected paired logits of one shape [N, C], got {gen.shape} and {ref.shape}")
    n = gen.shape[0]
    return {"softmax": _kl_sum(special.softmax(ref, axis=1), special.softmax(gen, axis=1)) / n,
            "sigmoid": _kl_sum(special.expit(ref), special.expit(gen)) / n}


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] embedding arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def clip_score(image_embeddings, text_embeddings) -> float:
    """100 * max(cos, 0) averaged over pairs (torchmetrics' CLIPScore on precomputed embeddings)."""
    return float(np.mean(100.0 * np.maximum(cosine(image_embeddings, text_embeddings), 0.0)))


def clipsim(frame_embeddings, text_embeddings) -> float:
    """CLIPSIM: the cosine similarity of every frame with its caption, averaged over frames then videos.
    frame_embeddings [N, F, D], text_embeddings [N, D]."""
    frames = np.asarray(frame_embeddings, np.float64)
    text = np.asarray(text_embeddings, np.float64)
    if frames.ndim != 3 or text.ndim != 2 or frames.shape[0] != text.shape[0]:
        raise ValueError(f"CLIPSIM: expected frames [N, F, D] and text [N, D], got {frames.shape} and {text.shape}")
    n, f, d = frames.shape
    sims = cosine(frames.reshape(n * f, d), np.repeat(text, f, axis=0)).reshape(n, f)
    return float(sims.mean())
