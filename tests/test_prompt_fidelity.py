import numpy as np
import torch

from studio_core.measure.fidelity import PromptFidelityIndex, thumbnail_features


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift by whole pixels, filling the uncovered edge with white (no wrap-around)."""
    out = torch.ones_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_feature_space_retrieves_training_images(emoji32):
    index = PromptFidelityIndex(emoji32.images, emoji32.captions)
    x = torch.from_numpy(emoji32.images).float() / 255
    assert index.score(x, emoji32.captions).top1 >= 0.99
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert index.score(noisy, emoji32.captions).top1 >= 0.90
    for dy, dx in [(0, 1), (1, 0), (0, -1), (-1, 0)]:
        assert index.score(_shift(x, dy, dx), emoji32.captions).top1 >= 0.90


def test_known_ranks_on_a_hand_checkable_gallery():
    white = np.full((8, 8, 3), 255, np.uint8)
    red, blue = white.copy(), white.copy()
    red[2:6, 2:6] = (255, 0, 0)
    blue[2:6, 2:6] = (0, 0, 255)
    index = PromptFidelityIndex(np.stack([white, red, blue]), ["white", "red", "blue"], grid=4)
    assert index.ranks(np.stack([red, red]), ["red", "blue"]) == [0, 1]
    res = index.score(np.stack([blue, white]), ["blue", "red"])
    assert res.top1 == 0.5 and res.top5 == 1.0
    assert index.nearest(np.stack([red]), k=2)[0][0] == "red"
    assert thumbnail_features(np.stack([red]), grid=4).shape == (1, 48)
