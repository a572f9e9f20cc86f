"""emoji-flux's training (``studio_core/embedded/training/flux.py``) on its tiny recipe, and its card."""

import json
from dataclasses import replace
from pathlib import Path

import torch

from studio_core.embedded.training.flux import (
    FLUX_RECIPES,
    FluxTrainer,
    _ids,
    build_flux_components,
    build_t5_tokenizer,
    train_flux,
)
from studio_core.embedded.training.tokenizer import build_caption_tokenizer

CACHE = Path(__file__).resolve().parents[1] / ".cache"  # the rendered emoji set, as the emoji32 fixture keeps it


def test_a_few_flow_matching_steps_on_a_tiny_config_lower_the_loss(emoji32, tmp_path):
    torch.manual_seed(0)
    recipe = replace(FLUX_RECIPES["tiny"], steps=80, batch=8, warmup=5, lr=3e-3, text_lr=2e-3, ema_decay=0.99)
    captions = emoji32.captions[:16]
    clip_tok = build_caption_tokenizer(tmp_path / "tok", captions, max_length=recipe.max_tokens, vocab_size=300)
    t5_tok = build_t5_tokenizer(tmp_path / "tok2", captions, recipe.t5_tokens)
    clip, t5, transformer, _ = build_flux_components(recipe, clip_tok, t5_tok)
    # 16 packed latents of 16x16 -> 64 tokens of 16 values: smooth, caption-dependent targets to learn
    g = torch.Generator().manual_seed(0)
    packed = torch.randn(16, 1, 16, generator=g).expand(16, 64, 16).contiguous()
    packed = torch.cat([packed, torch.zeros_like(packed[:1])])
    trainer = FluxTrainer(clip, t5, transformer, packed, _ids(clip_tok, captions + [""], recipe.max_tokens),
                          _ids(t5_tok, captions + [""], recipe.t5_tokens), recipe, "cpu", 16)
    idx = torch.arange(16)

    def fixed_loss():
        with torch.no_grad():
            return trainer.loss(idx, torch.Generator().manual_seed(123)).item()

    start = fixed_loss()
    for _ in range(recipe.steps):
        trainer.step(1.0)
    assert fixed_loss() < 0.8 * start
    live, ema = next(trainer.tr.parameters()), next(trainer.emas[2].parameters())
    assert not torch.equal(live, ema)  # the EMA copy is its own tensor, not the live weights


def test_the_t5_tokenizer_covers_every_caption_without_unknown_pieces(emoji32, tmp_path):
    tok = build_t5_tokenizer(tmp_path / "t5", list(emoji32.captions), 16)
    assert tok.model_max_length == 16
    for caption in list(emoji32.captions)[:400]:
        ids = tok(caption).input_ids
        assert tok.unk_token_id not in ids, caption
        assert tok.decode(ids, skip_special_tokens=True) == caption


def test_a_trained_folder_loads_as_a_flux_pipeline_and_continues(tmp_path, tiny_emoji_flux):
    from diffusers import DiffusionPipeline, FluxPipeline

    first = tiny_emoji_flux  # train_flux(FLUX_RECIPES["tiny"], ...), once a session (conftest)
    pipe = DiffusionPipeline.from_pretrained(first, local_files_only=True)
    assert isinstance(pipe, FluxPipeline)
    assert pipe.transformer.config.guidance_embeds is False
    assert pipe.vae.config.shift_factor is not None  # Flux's latent normalisation, measured at 64 px
    defaults = json.loads((first / "studio_defaults.json").read_text())
    assert defaults["domain"] == "emoji" and defaults["height"] == 64
    card = (first / "README.md").read_text()
    assert "64 image tokens" in card and "logit-normal" in card

    second = tmp_path / "second"
    report = train_flux(replace(FLUX_RECIPES["tiny"], name="cpu-continue"), second, CACHE, init=first,
                        evaluate_after=False)
    assert report["continued_from"]["recipe"]["name"] == "tiny"
    assert "`tiny`" in (second / "README.md").read_text()  # the card lists both stages
    assert (second / "tokenizer_2" / "tokenizer.json").read_text() == (first / "tokenizer_2" / "tokenizer.json").read_text()
