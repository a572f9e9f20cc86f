"""Standard metrics from backbones on disk (``studio_core.measure.standard_metrics`` and ``backbones``).

The weights are randomly initialised (seeded) backbones saved under torchvision's file names, and a tiny random
CLIPModel with the emoji model's CLIP BPE tokenizer: the tests check that the files are found, that
torchvision's key names and shapes load, and what each metric must give whatever the weights (0 for identical
inputs, finite and in range otherwise). LPIPS is also compared with torchmetrics' own implementation fed the
same backbone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from studio_core.errors import ModelLoadError
from studio_core.measure import standard_metrics as sm
from studio_core.measure.backbones import InceptionV3Features, alexnet_features, load_backbone, vgg16_features

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "studio_core" / "embedded" / "emoji-sd" / "tokenizer"

# torchvision's AlexNet().features state dict (torchvision/models/alexnet.py): conv layers at 0, 3, 6, 8, 10
ALEXNET_FEATURE_KEYS = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
}
# torchvision's vgg16().features (cfg "D", torchvision/models/vgg.py): conv layer index -> (out, in) channels
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
# Inception3 up to Mixed_7c (torchvision/models/inception.py): 94 BasicConv2d = 5 in the stem + 3 InceptionA x 7
# + InceptionB 4 + 4 InceptionC x 10 + InceptionD 6 + 2 InceptionE x 9; each has conv.weight, bn.weight, bn.bias
# (parameters) and bn.running_mean, bn.running_var, bn.num_batches_tracked (buffers).
INCEPTION_PARAMETERS, INCEPTION_STATE_ENTRIES = 94 * 3, 94 * 6
INCEPTION_SOME_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3), "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3), "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch3x3dbl_3a.bn.weight": (384,), "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _images(seed: int, n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Random backbones under torchvision's file names (with some of the keys the metrics ignore), and a tiny
    random CLIPModel with a CLIP BPE tokenizer in clip/."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("metric-weights")
    torch.manual_seed(0)
    alex = alexnet_features().state_dict()
    alex["classifier.6.bias"] = torch.zeros(1000)  # the classifier is not used: its keys are skipped
    torch.save(alex, folder / "alexnet-owt-7be5be79.pth")
    torch.save(vgg16_features().state_dict(), folder / "vgg16-397923af.pth")
    inception_net = InceptionV3Features()
    for conv in (m for m in inception_net.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # PyTorch's default init fades to ~0 by 7c
    inception = inception_net.state_dict()
    inception.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000),
                      "AuxLogits.fc.bias": torch.zeros(1000)})
    torch.save(inception, folder / "inception_v3_google-0cc3c7bd.pth")

    clip = folder / "clip"
    shutil.copytree(TOKENIZER, clip)  # the emoji model's tokenizer is a CLIP BPE tokenizer
    config = CLIPConfig(
        text_config={"vocab_size": 4112, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 24, "bos_token_id": 4110,
                     "eos_token_id": 4111, "pad_token_id": 4111},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(clip)
    return folder


# ------------------------------------------------------------------------------------------------ the folder
def test_from_dir_finds_each_backbone(weights_dir):
    w = sm.MetricWeights.from_dir(weights_dir)
    assert w.alexnet.name == "alexnet-owt-7be5be79.pth"
    assert w.vgg16.name == "vgg16-397923af.pth"
    assert w.inception_v3.name == "inception_v3_google-0cc3c7bd.pth"
    assert w.clip == (weights_dir / "clip").resolve()
    assert [w.unavailable_reason(m) for m in ("lpips", "lpips_vgg", "fid", "clip")] == [None] * 4


def test_from_dir_refuses_a_missing_folder_and_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"--metric-weights .*nowhere: no such folder"):
        sm.MetricWeights.from_dir(tmp_path / "nowhere")
    (tmp_path / "a.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a\.pth: not a folder"):
        sm.MetricWeights.from_dir(tmp_path / "a.pth")


def test_an_empty_folder_says_what_each_metric_needs(tmp_path):
    w = sm.MetricWeights.from_dir(tmp_path)
    assert w.unavailable_reason("lpips") == (
        f"LPIPS unavailable: no alexnet*.pth in {tmp_path.resolve()}; put torchvision's AlexNet state dict there "
        "(alexnet-owt-7be5be79.pth) and pass --metric-weights DIR; nothing is downloaded")
    assert "no inception_v3*.pth" in w.unavailable_reason("fid")
    assert "inception_v3_google-0cc3c7bd.pth" in w.unavailable_reason("fid")
    assert "no clip/ folder" in w.unavailable_reason("clip")
    for metric in ("lpips", "fid", "clip"):
        assert w.unavailable_reason(metric).endswith("nothing is downloaded")
    with pytest.raises(ModelLoadError, match="LPIPS unavailable: no alexnet"):
        sm.lpips(_images(0), _images(0), w)
    assert "no --metric-weights folder given" in sm.MetricWeights().unavailable_reason("fid")
    assert "--metric-weights DIR" in sm.how_to_provide()


# ------------------------------------------------------------------------------------------------ the keys
def test_alexnet_and_vgg_features_have_torchvisions_keys_and_shapes():
    assert _shapes(alexnet_features()) == ALEXNET_FEATURE_KEYS
    vgg = {}
    for i, (c_out, c_in) in VGG16_CONVS.items():
        vgg.update({f"features.{i}.weight": (c_out, c_in, 3, 3), f"features.{i}.bias": (c_out,)})
    assert _shapes(vgg16_features()) == vgg


def test_inception_has_torchvisions_keys_up_to_mixed_7c():
    net = InceptionV3Features()
    shapes = _shapes(net)
    assert {k: shapes.get(k) for k in INCEPTION_SOME_KEYS} == INCEPTION_SOME_KEYS
    assert len(list(net.parameters())) == INCEPTION_PARAMETERS
    assert len(shapes) == INCEPTION_STATE_ENTRIES
    assert not any(k.startswith(("fc.", "AuxLogits.")) for k in shapes)


def test_a_file_with_wrong_shapes_is_refused_naming_the_file(tmp_path):
    state = alexnet_features().state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 11, 11)
    torch.save(state, tmp_path / "alexnet-bad.pth")
    with pytest.raises(ModelLoadError, match=r"alexnet-bad\.pth does not fit torchvision's AlexNet "
                                             r"\(features\.0\.weight has shape \(32, 3, 11, 11\), expected"):
        load_backbone("alexnet", tmp_path / "alexnet-bad.pth")
    (tmp_path / "inception_v3_x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"inception_v3_x\.pth: not a readable PyTorch state dict"):
        load_backbone("inception_v3", tmp_path / "inception_v3_x.pth")


def test_a_file_saved_before_batch_norm_counted_batches_loads(weights_dir, tmp_path):
    """Older torchvision files lack ``num_batches_tracked``; eval never reads it, so they load all the same."""
    state = torch.load(weights_dir / "inception_v3_google-0cc3c7bd.pth", weights_only=True)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) == len(state) - 94
    torch.save(old, tmp_path / "inception_v3_old.pth")
    assert isinstance(load_backbone("inception_v3", tmp_path / "inception_v3_old.pth"), InceptionV3Features)


def test_each_file_is_loaded_once(weights_dir):
    w = sm.MetricWeights.from_dir(weights_dir)
    first = load_backbone("alexnet", w.alexnet)
    assert load_backbone("alexnet", w.alexnet) is first
    assert not first.training and not any(p.requires_grad for p in first.parameters())


# ------------------------------------------------------------------------------------------------ the metrics
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_for_identical_images_and_positive_otherwise(weights_dir, net):
    w = sm.MetricWeights.from_dir(weights_dir)
    a, b = _images(1), _images(2)
    same = sm.lpips(a, a, w, net=net)
    assert same.shape == (3,) and np.all(same == 0)
    differ = sm.lpips(a, b, w, net=net)
    assert np.all(np.isfinite(differ)) and np.all(differ > 0)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torchmetrics_on_the_same_backbone(weights_dir, monkeypatch, net):
    """torchmetrics' LPIPS takes its backbone from torchvision; handed ours instead, it must agree."""
    import torchmetrics.functional.image.lpips as tm

    w = sm.MetricWeights.from_dir(weights_dir)
    ours = load_backbone("alexnet" if net == "alex" else "vgg16", w.alexnet if net == "alex" else w.vgg16)
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda *args, **kwargs: ours.features)
    reference = tm._LPIPS(net=net)
    a, b = _images(3, size=48), _images(4, size=48)
    ta, tb = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1 for x in (a, b))
    with torch.no_grad():
        expected = reference(ta, tb).flatten().double().numpy()
    np.testing.assert_allclose(sm.lpips(a, b, w, net=net), expected, rtol=1e-5, atol=1e-9)


def test_lpips_refuses_mismatched_or_tiny_images(weights_dir):
    w = sm.MetricWeights.from_dir(weights_dir)
    with pytest.raises(ValueError, match="differ in shape"):
        sm.lpips(_images(0, n=2), _images(0, n=3), w)
    with pytest.raises(ValueError, match=r"at least 31 px a side, got 16x16"):
        sm.lpips(_images(0, size=16), _images(0, size=16), w)


def test_fid_kid_is_finite_and_zero_for_a_set_against_itself(weights_dir):
    w = sm.MetricWeights.from_dir(weights_dir)
    a, b = _images(5, n=2), _images(6, n=2) // 2  # Inception at 299 px is slow on 2 cores: two images a set
    other = sm.fid_kid(a, b, w)
    assert all(np.isfinite(other[k]) for k in ("fid", "fid_kid", "fid_kid_std"))
    assert other["fid"] > 0 and other["fid_n"] == 2
    assert "close to but not the TF-FID network" in other["fid_method"]
    assert "inception_v3_google-0cc3c7bd.pth" in other["fid_method"]
    itself = sm.fid_kid(a, a, w)
    assert abs(itself["fid"]) < 1e-6
    features = sm.inception_features(a[:1], w)
    assert features.shape == (1, 2048) and features.dtype == torch.float64


def test_fewer_samples_than_dimensions_give_the_same_frechet_distance():
    """fid_kid compares small sets in the span of their features; the distance must equal the full one."""
    from studio_core.measure.distribution import feature_stats, frechet_distance

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    fake = torch.randn(6, 64, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    # closed form for low rank: Tr sqrt(S1 S2) is the nuclear norm of A1 A2^T / sqrt((n1 - 1)(n2 - 1)), A centred
    a1, a2 = real - real.mean(0), fake - fake.mean(0)
    cross = torch.linalg.svdvals(a1 @ a2.T).sum() / ((len(real) - 1) * (len(fake) - 1)) ** 0.5
    exact = float((real.mean(0) - fake.mean(0)).square().sum() + (a1.square().sum() / (len(real) - 1))
                  + (a2.square().sum() / (len(fake) - 1)) - 2 * cross)
    assert sm._frechet(real, fake) == pytest.approx(exact, rel=1e-8)  # float64 eigen-solvers differ by ~1e-10
    # the 64 x 64 route agrees up to the round-off its rank-deficient product adds to the trace
    assert frechet_distance(*feature_stats(real), *feature_stats(fake)) == pytest.approx(exact, rel=1e-6)
    # against itself: 0 up to the square root of one zero eigenvalue's round-off (~1e-8 of the covariance scale)
    assert abs(sm._frechet(real, real)) < 1e-8 * float(2 * a1.square().sum() / (len(real) - 1))


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (300, 260)])
def test_clip_preprocessing_matches_pils_bicubic_resize_and_centre_crop(shape):
    """What CLIPImageProcessor does (PIL bicubic to the shortest side, centre crop, mean/std), within 2 levels."""
    from PIL import Image

    image = np.random.default_rng(8).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    h, w = shape
    long = int(224 * max(h, w) / min(h, w))
    new_w, new_h = (long, 224) if h <= w else (224, long)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), dtype=np.float32) / 255
    top, left = (new_h - 224) // 2, (new_w - 224) // 2
    expected = (resized[top:top + 224, left:left + 224] - sm.CLIP_MEAN) / sm.CLIP_STD
    ours = sm._clip_pixels(image[None], 224, sm.CLIP_MEAN, sm.CLIP_STD, "cpu")[0].permute(1, 2, 0).numpy()
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - expected).max() <= 2.5 / 255 / min(sm.CLIP_STD)


def test_clip_score_is_a_finite_number_between_0_and_100(weights_dir):
    w = sm.MetricWeights.from_dir(weights_dir)
    mean, std = sm.clip_score(_images(7, n=2, size=40), ["grinning face", "red heart"], w)
    assert np.isfinite(mean) and 0 <= mean <= 100 and np.isfinite(std) and std >= 0
    with pytest.raises(ValueError, match="one prompt per image: 2 images, 1 prompts"):
        sm.clip_score(_images(7, n=2), ["grinning face"], w)
