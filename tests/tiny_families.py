"""Tiny pipeline folders of every model family the studio meets, built from config with nothing downloaded.

Each ``build_<family>(folder, seed=0)`` saves a diffusers folder with the family's pipeline class, its
component classes and their wiring, and the scheduler its published checkpoints ship, at toy sizes
(widths 32, one or two layers). Weights are random (seeded), so images are noise; the point is the shapes
and the code paths. Tokenizers are built locally (CLIP's from the captions, T5's as a Unigram model, both
from ``tiny_flux``; Gemma's as a character-level BPE with byte fallback).

No folder carries a ``studio_defaults.json`` (only ``tiny_flux``'s does): the studio must read each
pipeline's own defaults. The native sizes follow each pipeline's own rule:

| family    | pipeline                  | native px | why                                                          |
|-----------|---------------------------|-----------|--------------------------------------------------------------|
| sd15      | StableDiffusionPipeline   | 64        | unet.sample_size 8 x VAE factor 8                            |
| sdxl      | StableDiffusionXLPipeline | 64        | unet.sample_size 8 x VAE factor 8                            |
| pixart    | PixArtAlphaPipeline       | 256       | transformer.sample_size 32 x 8; 32 selects the 256 px bins   |
| sd3       | StableDiffusion3Pipeline  | 64        | transformer.sample_size 8 x VAE factor 8                     |
| flux      | FluxPipeline              | 32        | its ``studio_defaults.json`` (the pipeline alone says 1024)  |
| sana_flow | SanaPipeline              | 512       | sample_size 16 x DC-AE 32; 16 selects the 512 px bins, but   |
|           |                           |           | ``__call__`` defaults to 1024 (generates 512, resizes up)    |
| sana_eps  | SanaPipeline              | 512       | the same, with an epsilon DPM-Solver                         |
| ddpm      | DDPMPipeline              | 32        | unet.sample_size, pixel space                                |

PixArt and Sana bin the requested size (``use_resolution_binning=True`` by default): they generate at the
nearest bin of their table and resize the decoded image back to the size asked for.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

from tiny_flux import CAPTIONS, _t5_tokenizer, build_tiny_flux

__all__ = [
    "FAMILIES",
    "build_ddpm",
    "build_flux",
    "build_pixart",
    "build_sana_eps",
    "build_sana_flow",
    "build_sd3",
    "build_sd15",
    "build_sdxl",
]

HIDDEN = 32  # text and denoiser widths
CLIP_LENGTH = 16  # CLIP tokenizer max length and position embeddings
WORDS = [w for c in CAPTIONS for w in c.split()]
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}  # SD 1.x / 2.x / XL


def _clip_tokenizer(folder: Path):
    from studio_core.embedded.training.tokenizer import build_caption_tokenizer

    return build_caption_tokenizer(folder, CAPTIONS, max_length=CLIP_LENGTH, vocab_size=300)


def _clip_encoder(tok, projection_dim: int | None = None):
    """A one-layer CLIP text encoder; with ``projection_dim``, the ``WithProjection`` class SDXL and SD3 use."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=CLIP_LENGTH, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, hidden_act="quick_gelu",
        projection_dim=projection_dim or HIDDEN)
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def _t5_encoder(tok, d_model: int = HIDDEN):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0))


def _sd_vae(latent_channels: int = 4, **kwargs):
    """An AutoencoderKL with SD's four levels (8x spatial compression) at 8-16 channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 16, 16),
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, norm_num_groups=8, **kwargs)


def build_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Stable Diffusion 1.5's shape: CLIP, a cross-attention UNet, SD's VAE, PNDM with SD's betas; 64 px."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = _clip_tokenizer(folder / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(HIDDEN, HIDDEN), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=8)
    scheduler = PNDMScheduler(**SD_BETAS, num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=_sd_vae(sample_size=64, scaling_factor=0.18215), text_encoder=_clip_encoder(tok), tokenizer=tok,
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """SDXL's shape: two CLIPs (the second with projection), a text_time UNet, Euler as SDXL ships; 64 px."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok, tok_2 = _clip_tokenizer(folder / "tokenizer"), _clip_tokenizer(folder / "tokenizer_2")
    time_dim = 8  # six micro-conditioning ids (size, crop, target size) of this width, plus the pooled text
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(HIDDEN, HIDDEN), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * HIDDEN, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + HIDDEN)
    scheduler = EulerDiscreteScheduler(
        **SD_BETAS, num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1, prediction_type="epsilon",
        interpolation_type="linear", use_karras_sigmas=False)
    pipe = StableDiffusionXLPipeline(
        vae=_sd_vae(sample_size=64, scaling_factor=0.13025), text_encoder=_clip_encoder(tok), tokenizer=tok,
        text_encoder_2=_clip_encoder(tok_2, projection_dim=HIDDEN), tokenizer_2=tok_2, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_pixart(folder: str | Path, seed: int = 0) -> Path:
    """PixArt-alpha's shape: T5, a PixArt transformer (learned sigma), SD's VAE, DPM-Solver++; 256 px bins."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = _t5_tokenizer(folder / "tokenizer", WORDS)
    # sample_size must be 32, 64 or 128 for resolution binning (256, 512, 1024 px tables)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=HIDDEN, caption_channels=HIDDEN, sample_size=32, patch_size=2)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", solver_order=2,
        algorithm_type="dpmsolver++", solver_type="midpoint", prediction_type="epsilon", lower_order_final=True)
    pipe = PixArtAlphaPipeline(
        tokenizer=tok, text_encoder=_t5_encoder(tok), vae=_sd_vae(sample_size=256, scaling_factor=0.18215),
        transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sd3(folder: str | Path, seed: int = 0) -> Path:
    """SD3's shape: two projected CLIPs and T5, an MMDiT, a 16-channel VAE, flow-matching Euler shift 3; 64 px."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = Path(folder)
    torch.manual_seed(seed)
    tok, tok_2 = _clip_tokenizer(folder / "tokenizer"), _clip_tokenizer(folder / "tokenizer_2")
    tok_3 = _t5_tokenizer(folder / "tokenizer_3", WORDS)
    # the two CLIP sequences are concatenated (2 x 32) and zero-padded to T5's width, as 768 + 1280 to 4096
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=2 * HIDDEN, caption_projection_dim=HIDDEN,
        pooled_projection_dim=2 * HIDDEN, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_sd_vae(latent_channels=16, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
                    use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_encoder(tok, projection_dim=HIDDEN), tokenizer=tok,
        text_encoder_2=_clip_encoder(tok_2, projection_dim=HIDDEN), tokenizer_2=tok_2,
        text_encoder_3=_t5_encoder(tok_3, d_model=2 * HIDDEN), tokenizer_3=tok_3)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_flux(folder: str | Path, seed: int = 0) -> Path:
    """``tiny_flux.build_tiny_flux`` (it keeps its ``studio_defaults.json``: 4 steps at 32x32)."""
    return build_tiny_flux(folder, seed=seed)


def _gemma_tokenizer(folder: Path):
    """A GemmaTokenizer (BPE with byte fallback, spaces as '▁') over Gemma's specials, bytes and characters.

    Sana prepends a long instruction and pads to 300 tokens past it, so any character must encode: the
    256 ``<0xNN>`` byte tokens catch what the character list misses.
    """
    from transformers import AutoTokenizer, GemmaTokenizer

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁"] + [c for c in string.ascii_letters + string.digits + string.punctuation]
    tok = GemmaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=8192)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _build_sana(folder: str | Path, seed: int, scheduler) -> Path:
    import torch
    from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = _gemma_tokenizer(folder / "tokenizer")
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=8192,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    # DC-AE's six levels (32x compression): ResBlocks, then EfficientViT (linear attention) at the deepest two
    levels = 6
    vae = AutoencoderDC(
        in_channels=3, latent_channels=8, attention_head_dim=8,
        encoder_block_types=("ResBlock",) * 4 + ("EfficientViTBlock",) * 2,
        decoder_block_types=("ResBlock",) * 4 + ("EfficientViTBlock",) * 2,
        encoder_block_out_channels=(8, 8, 8, 8, 16, 16), decoder_block_out_channels=(8, 8, 8, 8, 16, 16),
        encoder_layers_per_block=(1,) * levels, decoder_layers_per_block=(1,) * levels,
        encoder_qkv_multiscales=((),) * 4 + ((5,),) * 2, decoder_qkv_multiscales=((),) * 4 + ((5,),) * 2,
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407)
    # sample_size must be 16, 32, 64 or 128 for resolution binning (512 ... 4096 px tables)
    transformer = SanaTransformer2DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=HIDDEN,
        caption_channels=HIDDEN, sample_size=16, patch_size=1)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sana_flow(folder: str | Path, seed: int = 0) -> Path:
    """Sana's shape with the scheduler its diffusers checkpoints ship: flow DPM-Solver++, flow_shift 3; 512 bins.

    (diffusers' ``convert_sana_to_diffusers.py`` writes ``DPMSolverMultistepScheduler(flow_shift=...,
    use_flow_sigmas=True, prediction_type="flow_prediction")`` by default; ``FlowMatchEulerDiscrete`` is
    its ``flow-euler`` option.)
    """
    from diffusers import DPMSolverMultistepScheduler

    return _build_sana(folder, seed, DPMSolverMultistepScheduler(
        num_train_timesteps=1000, flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"))


def build_sana_eps(folder: str | Path, seed: int = 0) -> Path:
    """The same Sana with an epsilon-prediction DPM-Solver++, a scheduler users report having."""
    from diffusers import DPMSolverMultistepScheduler

    return _build_sana(folder, seed, DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="epsilon"))


def build_ddpm(folder: str | Path, seed: int = 0) -> Path:
    """An unconditional pixel-space DDPM (google/ddpm-cifar10-32's scheduler) at 32 px."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(HIDDEN, HIDDEN), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                              variance_type="fixed_large", clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


FAMILIES: dict[str, Callable[..., Path]] = {
    "sd15": build_sd15,
    "sdxl": build_sdxl,
    "pixart": build_pixart,
    "sd3": build_sd3,
    "flux": build_flux,
    "sana_flow": build_sana_flow,
    "sana_eps": build_sana_eps,
    "ddpm": build_ddpm,
}
