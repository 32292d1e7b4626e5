"""Frechet distance and feature statistics: the reference function's values, closed forms, streaming."""
import pathlib

import numpy as np
import pytest

from codi_jax.eval.metrics import frechet

GOLDENS = pathlib.Path(__file__).parent / "metric_goldens"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDENS / "frechet.npz") as g:
        return {k: g[k] for k in g.files}


def test_matches_pytorch_fid(golden):
    """Same features, same statistics (np.mean / np.cov) -> pytorch-fid's calculate_frechet_distance."""
    ours = frechet.statistics_of(golden["a"]).distance(frechet.statistics_of(golden["b"]))
    assert ours == pytest.approx(float(golden["distance_ab"]), rel=1e-6, abs=1e-6)
    few = frechet.statistics_of(golden["few"]).distance(frechet.statistics_of(golden["few2"]))
    assert few == pytest.approx(float(golden["distance_few"]), rel=1e-6, abs=1e-6)


def test_set_against_itself_is_zero(golden):
    stats = frechet.statistics_of(golden["a"])
    assert abs(stats.distance(stats)) < 1e-8


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    var1, var2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    got = frechet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(frechet.gaussian_frechet_closed_form(mu1, var1, mu2, var2), rel=1e-9)


def test_scaled_full_covariance_matches_closed_form():
    """sigma2 = c^2 sigma1 -> sqrt(sigma1 sigma2) = c sigma1, so d = |dmu|^2 + (1 - c)^2 tr(sigma1)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((10, 10))
    sigma = a @ a.T + 0.1 * np.eye(10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    c = 1.7
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma)
    assert frechet.frechet_distance(mu1, sigma, mu2, c * c * sigma) == pytest.approx(expected, rel=1e-9)


def test_samples_of_analytic_gaussians_approach_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.zeros(4), np.full(4, 0.5)
    var1, var2 = np.full(4, 1.0), np.full(4, 4.0)
    x = rng.normal(mu1, np.sqrt(var1), (200_000, 4))
    y = rng.normal(mu2, np.sqrt(var2), (200_000, 4))
    got = frechet.statistics_of(x).distance(frechet.statistics_of(y))
    assert got == pytest.approx(frechet.gaussian_frechet_closed_form(mu1, var1, mu2, var2), rel=0.02)


def test_running_statistics_equal_numpy_in_any_batching(golden):
    x = golden["a"] + 1e3  # a large offset: raw sums of outer products would lose digits here
    whole = frechet.statistics_of(x)
    running = frechet.RunningStatistics()
    for chunk in np.array_split(x, [1, 7, 8, 150]):
        running.add(chunk)
    result = running.result()
    assert result.count == len(x)
    np.testing.assert_allclose(result.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(result.sigma, whole.sigma, rtol=1e-7, atol=1e-9)


def test_running_statistics_refuse_bad_input():
    running = frechet.RunningStatistics()
    running.add(np.zeros((1, 3)))
    with pytest.raises(frechet.StatisticsError, match="at least 2 samples"):
        running.result()
    with pytest.raises(frechet.StatisticsError, match="dimension 4"):
        running.add(np.zeros((2, 4)))


def test_mismatched_dimensions_are_one_clear_error():
    with pytest.raises(frechet.StatisticsError, match="different dimensions"):
        frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_cached_statistics_round_trip_and_fingerprint(tmp_path, golden):
    stats = frechet.statistics_of(golden["b"])
    key = frechet.fingerprint(weights="w.npz", split="test", n=200)
    stats.save(tmp_path / "ref.npz", key)
    loaded = frechet.Statistics.load(tmp_path / "ref.npz", key)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 200
    other = frechet.fingerprint(weights="w.npz", split="test", n=100)
    assert frechet.Statistics.load(tmp_path / "ref.npz", other) is None
    assert frechet.Statistics.load(tmp_path / "absent.npz", key) is None
