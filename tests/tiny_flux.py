"""A tiny Flux-shaped pipeline built from config, with nothing downloaded.

``build_tiny_flux(folder)`` saves a ``FluxPipeline`` folder with FLUX.1's component classes and their
wiring (CLIP pooled embedding + T5 sequence embedding, a FluxTransformer2DModel with double- and
single-stream blocks, a 16-channel AutoencoderKL with Flux's shift/scale, FlowMatchEulerDiscrete with
the resolution-dependent shift) at toy sizes: 2 double + 2 single blocks of width 32, 32x32 px images.
Both tokenizers are built locally: CLIP's from the captions with ``studio_core.tokenizer`` (byte-level
BPE in CLIP's layout), T5's as a ``tokenizers`` Unigram model wrapped in ``T5TokenizerFast`` (no
sentencepiece file). Weights are random (seeded), so images are noise; the point is the shapes and
the code paths.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

__all__ = ["CAPTIONS", "build_tiny_flux"]

CAPTIONS = ["a red apple", "a blue car on a road", "a cat", "a photo of a mountain lake", "a", "grinning face"]
SIZE = 32  # px; VAE with 3 levels: 8x8 latents, packed 2x2 -> 16 image tokens
HIDDEN = 32  # text and transformer widths


def _t5_tokenizer(folder: Path, words: list[str]):
    """A T5TokenizerFast over a small Unigram vocabulary: T5's special tokens, '▁', characters, words."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -6.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("▁" + w, -1.0) for w in sorted(set(words))]
    tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    tok.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def build_tiny_flux(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random FluxPipeline folder (plus ``studio_defaults.json``: 4 steps at 32x32) and return it."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from studio_core.embedded.training.tokenizer import build_caption_tokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    clip_tok = build_caption_tokenizer(folder / "tokenizer", CAPTIONS, max_length=16, vocab_size=300)
    t5_tok = _t5_tokenizer(folder / "tokenizer_2", [w for c in CAPTIONS for w in c.split()])
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id, hidden_act="quick_gelu"))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=HIDDEN, d_kv=8, d_ff=2 * HIDDEN, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id, decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=HIDDEN, pooled_projection_dim=HIDDEN, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 16),
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=SIZE, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "studio_defaults.json").write_text(json.dumps(
        {"guidance_scale": 3.5, "num_inference_steps": 4, "height": SIZE, "width": SIZE}), encoding="utf-8")
    return folder
