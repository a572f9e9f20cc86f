from dataclasses import replace

import torch

from studio_core.embedded.training.recipe import RECIPES, build_components
from studio_core.embedded.training.tokenizer import build_caption_tokenizer
from studio_core.embedded.training.train import DenoiserTrainer, _tokenize, encode_latents, train_vae


def test_a_few_steps_on_a_tiny_config_lower_the_loss(emoji32, tmp_path):
    torch.manual_seed(0)
    recipe = replace(RECIPES["tiny"], steps=60, batch=8, warmup=5, unet_lr=2e-3, text_lr=1e-3, vae_steps=30,
                     vae_batch=8)
    captions = emoji32.captions[:16]
    images = torch.from_numpy(emoji32.images[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    tok = build_caption_tokenizer(tmp_path / "tok", captions, max_length=16)
    vae, te, unet, sched = build_components(recipe, len(tok), tok.bos_token_id, tok.eos_token_id)

    def recon_error():
        with torch.no_grad():
            return (vae.decode(vae.encode(images).latent_dist.mean).sample - images).abs().mean().item()

    before = recon_error()
    train_vae(vae, images, recipe, "cpu")
    assert recon_error() < 0.8 * before

    latents = encode_latents(vae, images, "cpu")
    trainer = DenoiserTrainer(te, unet, sched, latents / latents.std(), _tokenize(tok, captions),
                              _tokenize(tok, [""])[0], recipe, "cpu")
    idx = torch.arange(16)

    def fixed_loss():
        with torch.no_grad():
            return trainer.loss(idx, torch.Generator().manual_seed(123)).item()

    start = fixed_loss()
    for _ in range(recipe.steps):
        trainer.step()
    assert fixed_loss() < 0.8 * start
    # the EMA copy moved away from the initial weights, towards the live ones
    live = next(trainer.unet.parameters())
    ema = next(trainer.ema_unet.parameters())
    assert not torch.equal(live, ema)


def test_a_run_continued_from_a_finished_folder_keeps_its_vae_and_tokenizer_and_says_so(tmp_path):
    """``--init``: the second stage starts from the first's shipped weights (not from scratch), keeps the
    VAE and tokenizer byte for byte, and the card and report name both stages."""
    import json
    from pathlib import Path

    from studio_core.embedded.training.train import main, train

    cache = Path(__file__).resolve().parents[1] / ".cache"
    first, second = tmp_path / "a", tmp_path / "b"
    train(RECIPES["tiny"], first, cache, "cpu")
    main(["--recipe", "tiny", "--init", str(first), "--out", str(second), "--cache-dir", str(cache),
          "--device", "cpu"])
    report = json.loads((second / "training_report.json").read_text())
    assert report["continued_from"]["recipe"]["name"] == "tiny"
    assert report["continued_from"]["timings"] == json.loads((first / "training_report.json").read_text())["timings"]
    for name in ("vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "unet/diffusion_pytorch_model.safetensors").read_bytes() != \
        (second / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    card = (second / "README.md").read_text()
    assert "_name_or_path" not in (second / "unet" / "config.json").read_text()
    assert "were **continued**" in card and "trained by the `tiny` stage, kept since" in card
    try:
        main(["--recipe", "tiny", "--init", str(second), "--out", str(second)])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--init equal to --out was accepted")
