"""Distribution metrics on feature vectors: Fréchet distance and KID against torchmetrics, precision and
recall on hand-checkable point sets, the LPIPS-style distance on a random feature network, and the
real set's feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from studio_core.embedded.training import data as emoji_data
from studio_core.measure import distribution
from studio_core.measure.distribution import (
    feature_stats,
    frechet_distance,
    kid,
    perceptual_distance,
    precision_recall,
    real_features,
)
from studio_core.measure.feature_net import EmojiFeatureNet, FeatureNetConfig, as_input


class Passthrough(nn.Module):
    """A torchmetrics feature extractor that returns what it is fed: the metric then sees our features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim  # read by FrechetInceptionDistance instead of a dummy 299 px forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _feats(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, dim).double() + shift


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 = 1.5^2 + 1.5^2
    one_d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-0.5]), torch.tensor([[0.25]]))
    assert one_d == pytest.approx(4.5, rel=1e-12)
    mu1, mu2 = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 2.0, 3.0])
    s1, s2 = torch.tensor([1.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, 0.5])
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())  # 17 + 5
    assert frechet_distance(mu1, torch.diag(s1 ** 2), mu2, torch.diag(s2 ** 2)) == pytest.approx(expected, rel=1e-12)


def test_feature_stats_and_frechet_distance_match_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _feats(300, 16, seed=0), _feats(200, 16, seed=1, shift=0.3) ** 2
    mu, sigma = feature_stats(real)
    assert torch.allclose(mu, real.mean(0)) and torch.allclose(sigma, torch.cov(real.T), rtol=1e-12, atol=1e-12)
    fid = FrechetInceptionDistance(feature=Passthrough(16))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = frechet_distance(*feature_stats(fake), *feature_stats(real))
    assert ours > 1.0
    assert ours == pytest.approx(float(fid.compute()), rel=1e-9)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
@pytest.mark.parametrize("degree, gamma, coef", [(3, None, 1.0), (2, 0.5, 0.25)])
def test_kid_on_one_whole_subset_matches_torchmetrics(degree, gamma, coef):
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _feats(60, 8, seed=2), _feats(60, 8, seed=3, shift=0.5)
    # one subset of every sample: the MMD estimate does not depend on order, so neither RNG matters
    metric = KernelInceptionDistance(feature=Passthrough(8), subsets=1, subset_size=60, degree=degree,
                                     gamma=gamma, coef=coef)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs, _ = metric.compute()
    mean, std = kid(real, fake, subsets=1, subset_size=60, degree=degree, gamma=gamma, coef=coef)
    assert mean > 0.01
    assert mean == pytest.approx(float(theirs), rel=1e-9)
    assert std == 0.0


def test_kid_is_about_zero_against_itself_and_repeatable_with_its_seed():
    real, shifted = _feats(2000, 8, seed=4), _feats(2000, 8, seed=5, shift=0.5)
    # subsets of one set share samples, whose cross terms the estimator keeps: slightly below 0
    to_itself, _ = kid(real, real, subsets=10, subset_size=1000)
    to_shifted, _ = kid(real, shifted, subsets=10, subset_size=1000)
    assert to_shifted > 1.0 and abs(to_itself) < 0.03 * to_shifted
    state = torch.get_rng_state()
    assert kid(real, shifted, subsets=5, subset_size=50, seed=7) == kid(real, shifted, subsets=5, subset_size=50, seed=7)
    assert kid(real, shifted, subsets=5, subset_size=50, seed=7) != kid(real, shifted, subsets=5, subset_size=50, seed=8)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is never drawn from
    with pytest.raises(ValueError, match="1 real and 5 fake"):
        kid(real[:1], shifted[:5])


def test_precision_recall_on_a_hand_checked_line(monkeypatch):
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.7], [1.1], [9.0], [10.0]])
    # k=1: every real ball has radius 1, their union is [-1, 4]: fakes 0.7 and 1.1 are in it, 9 and 10 are
    # not -> precision 2/4. Fake radii 0.4, 0.4, 1, 1: balls [0.3, 1.1], [0.7, 1.5], [8, 10], [9, 11] hold
    # only the real 1 -> recall 1/4.
    assert precision_recall(real, fake, k=1) == (0.5, 0.25)
    # k=3: real radii 3, 2, 2, 3 (union [-3, 6]) still miss 9 and 10; the fake 0.7's third neighbour is 10,
    # so its ball (radius 9.3) holds every real sample -> recall 1.
    assert precision_recall(real, fake, k=3) == (0.5, 1.0)
    monkeypatch.setattr(distribution, "_CDIST_CHUNK_ELEMENTS", 5)  # one-row blocks: the same answers
    assert precision_recall(real, fake, k=1) == (0.5, 0.25)
    assert precision_recall(real, fake, k=3) == (0.5, 1.0)


def test_precision_recall_of_identical_and_far_apart_sets():
    real = _feats(200, 12, seed=6)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, _feats(150, 12, seed=7, shift=100.0)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="3 real, 10 fake"):
        precision_recall(real[:3], real[:10], k=3)


@pytest.fixture
def random_net() -> EmojiFeatureNet:
    torch.manual_seed(0)
    return EmojiFeatureNet(FeatureNetConfig(n_classes=10, channels=(8, 8)))


def test_perceptual_distance_grows_with_the_corruption(random_net):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    noise = rng.normal(size=images.shape)
    weak = np.clip(images + 8 * noise, 0, 255).astype(np.uint8)
    strong = np.clip(images + 64 * noise, 0, 255).astype(np.uint8)
    random_net.train()  # the call must switch to eval: BatchNorm on batch statistics would mix images
    assert np.array_equal(perceptual_distance(random_net, images, images), np.zeros(6))
    d_weak, d_strong = perceptual_distance(random_net, weak, images), perceptual_distance(random_net, strong, images)
    assert d_weak.shape == (6,) and np.all(d_weak > 0) and np.all(d_strong > d_weak)
    # the formula written out another way: cosine-normalised channel vectors of each stage (F.normalize)
    with torch.no_grad():
        a, b = (random_net.stage_outputs(as_input(x[:1], 32)) for x in (strong, images))
        by_hand = sum(float((F.normalize(fa, dim=1) - F.normalize(fb, dim=1)).square().mean()) for fa, fb in zip(a, b))
    assert d_strong[0] == pytest.approx(by_hand, rel=1e-5)
    alone = np.array([perceptual_distance(random_net, strong[i:i + 1], images[i:i + 1])[0] for i in range(6)])
    np.testing.assert_allclose(alone, d_strong, rtol=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        perceptual_distance(random_net, images[:2], images[:3])
    with pytest.raises(ValueError, match="images must be a uint8"):
        perceptual_distance(random_net, images.astype(np.float32), images)


def test_real_features_are_computed_once_and_kept_on_disk(random_net, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    captions = ["grinning face", "red heart", "flag: France", "keycap: 7", "man scientist: dark skin tone"]
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    built = []

    def fake_build(cache_dir, size):
        built.append(size)
        return emoji_data.EmojiDataset(images, captions, list("abcde"), np.zeros(5, bool), {})

    monkeypatch.setattr(emoji_data, "load_or_build", fake_build)
    monkeypatch.setattr(distribution, "_REAL_FEATURES", {})
    digest = "0123456789abcdef" * 4
    feats, caps = real_features(random_net, 32, tmp_path, digest)
    assert caps == captions and built == [32]
    assert torch.equal(feats, random_net.features(images))
    assert (tmp_path / "emoji-features-0123456789ab-32.npz").is_file()
    assert real_features(random_net, 32, tmp_path, digest)[0] is feats  # kept in the process

    def no_build(cache_dir, size):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr(emoji_data, "load_or_build", no_build)
    distribution._REAL_FEATURES.clear()
    again, caps_again = real_features(random_net, 32, tmp_path, digest)
    assert caps_again == captions and torch.equal(again, feats)

    # a broken file is recomputed and replaced; another size is another file
    monkeypatch.setattr(emoji_data, "load_or_build", fake_build)
    (tmp_path / "emoji-features-0123456789ab-32.npz").write_bytes(b"not an npz")
    distribution._REAL_FEATURES.clear()
    assert torch.equal(real_features(random_net, 32, tmp_path, digest)[0], feats) and built == [32, 32]
    real_features(random_net, 16, tmp_path, digest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emoji-features-0123456789ab-16.npz",
                                                          "emoji-features-0123456789ab-32.npz"]
    with pytest.raises(ValueError, match="weights_digest"):
        real_features(random_net, 32, tmp_path, "../../etc")
