"""Published architectures, built from their configs with random weights (nothing is downloaded).

Benchmarks use them to time knobs on the real shapes of models users ship, e.g. an SD 1.5 UNet at
512x512 on a GPU. Quality numbers on random weights mean nothing; speed and memory do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["SD15_TEXT", "SD15_UNET", "SD15_VAE", "sd15_pipeline"]

# Stable Diffusion 1.5's published UNet / VAE / CLIP text-encoder configs (architecture only)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")


def sd15_pipeline(device: str, dtype):
    """A StableDiffusionPipeline with SD 1.5's architecture and random weights; tokenizer from our captions."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio_core.embedded.training.tokenizer import build_caption_tokenizer
    from studio_core.prompts import GALLERY_PROMPTS

    torch.manual_seed(0)
    tok = build_caption_tokenizer(Path(tempfile.mkdtemp(prefix="sd15-tok-")) / "tok", list(GALLERY_PROMPTS),
                                  max_length=77)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, **SD15_TEXT))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**SD15_VAE), text_encoder=te, tokenizer=tok,
                                   unet=UNet2DConditionModel(**SD15_UNET), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)
