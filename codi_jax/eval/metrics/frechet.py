"""Gaussian statistics of feature sets, streamed, cached on disk, and the Frechet distance between them.

The distance is pytorch-fid's formula (`calculate_frechet_distance`: scipy's `sqrtm` of the covariance
product, `eps` on the diagonals when that product is singular, a small imaginary part dropped), written
against numpy because the reference package cannot be imported without torchvision, which our torch
build rules out; tests/test_metrics_frechet.py checks it against the reference's own outputs. AudioLDM's FD
and the FAD package use the same formula on PANNs and VGGish features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
from scipy import linalg

# The tolerance pytorch-fid accepts for the imaginary part of sqrtm's diagonal before it refuses.
IMAGINARY_TOLERANCE = 1e-3


class StatisticsError(ValueError):
    """Statistics that cannot be compared or computed, with a one-line reason."""


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise StatisticsError(f"statistics of different dimensions: means {mu1.shape} vs {mu2.shape}, "
                              f"covariances {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # A (nearly) singular product, e.g. fewer samples than dimensions: regularise both covariances.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise StatisticsError(f"sqrt of the covariance product has an imaginary component of "
                                  f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are degenerate")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def gaussian_frechet_closed_form(mu1, var1, mu2, var2) -> float:
    """The distance between two Gaussians with diagonal covariances (variances var1, var2):
    ||mu1 - mu2||^2 + sum (sqrt(var1) - sqrt(var2))^2, the analytic value the general formula must reach."""
    mu1, mu2, var1, var2 = (np.asarray(a, np.float64) for a in (mu1, mu2, var1, var2))
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2))


@dataclasses.dataclass
class Statistics:
    """Mean and (unbiased, as numpy's `np.cov`) covariance of `count` feature vectors."""
    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def distance(self, other: "Statistics") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path, fingerprint: str = "") -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, mu=self.mu, sigma=self.sigma, count=self.count, fingerprint=fingerprint)
        partial.rename(path)
        return path

    @classmethod
    def load(cls, path, fingerprint: str | None = None) -> "Statistics | None":
        """The statistics saved at `path`, or None when there are none or they were fitted for another
        `fingerprint` (other weights, data or preprocessing)."""
        path = pathlib.Path(path)
        if not path.is_file():
            return None
        with np.load(path) as saved:
            if fingerprint is not None and str(saved["fingerprint"]) != fingerprint:
                return None
            return cls(np.array(saved["mu"]), np.array(saved["sigma"]), int(saved["count"]))


class RunningStatistics:
    """Mean and covariance of feature batches added one at a time (Chan et al.'s pairwise update of the
    mean and the centred sum of squares, in float64), so host memory holds one [D, D] matrix whatever the
    number of samples, without the cancellation of summing raw outer products."""

    def __init__(self):
        self.count = 0
        self._mean = None
        self._m2 = None

    def add(self, features) -> None:
        x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise StatisticsError(f"features: expected [N, D], got shape {x.shape}")
        if not x.shape[0]:
            return
        if self._mean is None:
            self._mean = np.zeros(x.shape[1])
            self._m2 = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._mean.shape[0]:
            raise StatisticsError(f"features of dimension {x.shape[1]} added to statistics of dimension "
                                  f"{self._mean.shape[0]}")
        n, m = self.count, x.shape[0]
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        delta = batch_mean - self._mean
        self._m2 += centred.T @ centred + np.outer(delta, delta) * (n * m / (n + m))
        self._mean += delta * (m / (n + m))
        self.count = n + m

    def result(self) -> Statistics:
        if self.count < 2:
            raise StatisticsError(f"a covariance needs at least 2 samples, got {self.count}")
        return Statistics(self._mean.copy(), self._m2 / (self.count - 1), self.count)


def statistics_of(features) -> Statistics:
    """Statistics of a whole [N, D] feature array at once (np.mean, np.cov as the references compute them)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise StatisticsError(f"features: expected [N >= 2, D], got shape {x.shape}")
    return Statistics(np.mean(x, axis=0), np.cov(x, rowvar=False), x.shape[0])


def fingerprint(**parts) -> str:
    """A short stable hash of JSON-able parts (weights file, dataset, split, count, preprocessing) that
    names a cached reference-set statistic."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
