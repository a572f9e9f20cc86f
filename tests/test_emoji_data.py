import numpy as np

from studio_core.embedded.training.data import build_dataset, caption_for, list_emoji, render_emoji


def test_builder_on_a_subset_is_deterministic_and_clean():
    a = build_dataset(size=32, limit=80)
    b = build_dataset(size=32, limit=80)
    assert a.images.shape[1:] == (32, 32, 3) and a.images.dtype == np.uint8
    assert a.captions == b.captions and np.array_equal(a.images, b.images)
    # every image is unique after deduplication, and the background (corners) is white
    assert len({img.tobytes() for img in a.images}) == len(a)
    assert (a.images[:, 0, 0] >= 250).all()
    assert len(a) + sum(a.dropped.values()) == 80
    assert a.captions[0] == "keycap: #"  # Unicode order, CLDR short names


def test_full_set_size_split_and_drops(emoji32):
    assert 3600 <= len(emoji32) <= 3900
    held = emoji32.held_out_indices
    assert 0.04 <= len(held) / len(emoji32) <= 0.07
    # held-out captions are single-skin-tone variants whose base and other tones stay in training
    train = {emoji32.captions[i] for i in emoji32.train_indices}
    for i in held[:20]:
        cap = emoji32.captions[i]
        assert cap.endswith("skin tone")
        base = cap.split(":")[0]
        assert any(c.startswith(base + ":") for c in train)
    assert emoji32.dropped["placeholder"] > 0 and emoji32.dropped["duplicate_render"] > 0
    assert len(set(emoji32.captions)) == len(emoji32)


def test_captions_are_cldr_names():
    names = dict(list_emoji())
    assert names["\U0001F600"] == "grinning face"
    assert names["\U0001F1EB\U0001F1F7"] == "flag: France"
    assert names["\U0001F9D1\U0001F3FF\u200d\U0001F52C"] == "scientist: dark skin tone"
    # the fallback for emoji newer than emoji-test.txt reads like a CLDR name
    assert caption_for("x", ":woman_running_facing_right_dark_skin_tone:", {}) == "woman running facing right: dark skin tone"


def test_render_is_centered_on_white():
    img = render_emoji("\U0001F600", 32)
    assert img.shape == (32, 32, 3)
    assert img[0].min() > 240 and img[16, 16].mean() < 240  # white border, drawn centre
