import torch

from studio_core.tokenizer import build_caption_tokenizer
from studio_core.training import RECIPES, DenoiserTrainer, _tokenize, build_components, encode_latents, train_vae
from dataclasses import replace


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
