"""Statistics, the Fréchet distance and .npz files, against pytorch-fid's own functions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from inception_fast.fid import (
    calculate_frechet_distance,
    feature_statistics,
    load_statistics,
    save_statistics,
)

fid_score = pytest.importorskip("pytorch_fid.fid_score")


def _features(rng, count: int, dims: int, shift: float = 0.0) -> np.ndarray:
    """Post-ReLU-like correlated features, as the network's are."""
    mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims)
    return np.maximum(rng.standard_normal((count, dims)) @ mixing + shift, 0)


def test_statistics_are_pytorch_fids():
    features = _features(np.random.default_rng(0), 300, 64).astype(np.float32)
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, np.mean(features.astype(np.float64), axis=0))
    np.testing.assert_array_equal(sigma, np.cov(features.astype(np.float64), rowvar=False))


def test_statistics_of_a_tensor_equal_numpys():
    """Features still on the network's device are reduced there in float64: the same statistics
    to rounding (a different summation order), and the same refusals."""
    features = _features(np.random.default_rng(2), 300, 64).astype(np.float32)
    mu, sigma = feature_statistics(torch.from_numpy(features))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, np.mean(features.astype(np.float64), axis=0), rtol=1e-12, atol=1e-14)
    expected_sigma = np.cov(features.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.ones(1, 8))
    with pytest.raises(ValueError, match="NaN or inf"):
        feature_statistics(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))


def test_eigh_distance_on_a_torch_device_equals_numpys():
    rng = np.random.default_rng(3)
    stats_a = feature_statistics(_features(rng, 500, 64))
    stats_b = feature_statistics(_features(rng, 500, 64, shift=0.3))
    on_numpy = calculate_frechet_distance(*stats_a, *stats_b, method="eigh")
    on_torch = calculate_frechet_distance(*stats_a, *stats_b, method="eigh", device="cpu")
    assert on_torch == pytest.approx(on_numpy, rel=1e-10)


@pytest.mark.parametrize("count", [500, 40])  # full-rank covariances, and singular ones
def test_frechet_distance_equals_pytorch_fids(count):
    rng = np.random.default_rng(count)
    stats_a = feature_statistics(_features(rng, count, 64))
    stats_b = feature_statistics(_features(rng, count, 64, shift=0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's deprecation of disp= and singular-matrix notes
        expected = fid_score.calculate_frechet_distance(*stats_a, *stats_b)
    assert calculate_frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-12)
    # The eigendecomposition route gives the same value.
    assert calculate_frechet_distance(*stats_a, *stats_b, method="eigh") == pytest.approx(expected, rel=1e-7)
    # A distribution's distance to itself: 0 up to rounding (relative to the covariance's trace;
    # the square roots of a singular covariance's zero eigenvalues amplify it).
    scale = np.trace(stats_a[1])
    assert calculate_frechet_distance(*stats_a, *stats_a, method="eigh") == pytest.approx(0, abs=1e-6 * scale)


def test_frechet_distance_refuses_mismatched_statistics():
    rng = np.random.default_rng(1)
    small = feature_statistics(_features(rng, 100, 8))
    large = feature_statistics(_features(rng, 100, 16))
    with pytest.raises(ValueError, match="different lengths"):
        calculate_frechet_distance(*small, *large)
    with pytest.raises(ValueError, match="method"):
        calculate_frechet_distance(*small, *small, method="schur")


def test_statistics_refuse_too_few_images_and_non_finite_features():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.ones((1, 8)))
    broken = np.ones((4, 8))
    broken[2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        feature_statistics(broken)


def test_npz_files_move_both_ways_between_the_tools(tmp_path):
    rng = np.random.default_rng(2)
    mu, sigma = feature_statistics(_features(rng, 50, 16))
    ours = save_statistics(tmp_path / "ours", mu, sigma)
    assert ours.name == "ours.npz" and ours.is_file()  # numpy adds .npz, as with pytorch-fid
    theirs_mu, theirs_sigma = fid_score.compute_statistics_of_path(str(ours), None, 50, 16, "cpu")
    np.testing.assert_array_equal(theirs_mu, mu)
    np.testing.assert_array_equal(theirs_sigma, sigma)
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu, sigma=sigma)  # what pytorch-fid's save_fid_stats writes
    loaded = load_statistics(theirs)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)


def test_npz_without_statistics_and_other_files_are_refused(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=np.zeros(3))
    with pytest.raises(ValueError, match="no mu or sigma"):
        load_statistics(wrong)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot read FID statistics"):
        load_statistics(text)
