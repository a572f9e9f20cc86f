"""Train the second embedded model, ``emoji-flux``: a complete ``FluxPipeline`` on the emoji data with a
rectified-flow (flow-matching) objective, so the transformer knobs have a real model to act on.

Shape: 64 px images through emoji-sd's VAE (f4, 4 channels, trained at 32 px and reused unchanged: its
reconstruction PSNR at 64 px is within 1 dB of its 32 px figure), so 16x16 latents, packed 2x2 by
``FluxPipeline`` into 64 image tokens of 16 values. The VAE only gets Flux's latent ``shift_factor`` (the mean
of the training latents) and a ``scaling_factor`` of 1 / their std at 64 px.

Components, all built and trained here: a CLIP text encoder (pooled embedding) and a T5 encoder (sequence
embedding), each with its tokenizer learned from the training captions (CLIP's byte-level BPE; T5's
Unigram over the captions' words and characters), and a ``FluxTransformer2DModel`` with double- and
single-stream blocks. No guidance embedding: FLUX.1-dev's is distilled from a guided teacher, which we do
not have, so guidance here is true classifier-free guidance (``true_cfg_scale`` with an empty negative
prompt, which ``studio_core.measure.generation.generate`` passes for such a model).

Objective: x_t = (1 - t) x_0 + t eps, the transformer predicts eps - x_0 (Flux's and diffusers'
``FlowMatchEulerDiscreteScheduler`` convention), plain MSE. t is drawn logit-normal(0, 1), which Esser et
al. 2024 (SD3, section 5.1) found best of the samplings they compared: it trains the middle of the path,
where the prediction is hardest, more than its ends. 10% of captions are dropped (both encoders see "")
for classifier-free guidance. AdamW with warm-up and cosine over the steps or the time budget, whichever
ends first; an EMA of the weights is what gets saved.

    python -m studio_core.embedded.training flux --recipe cpu --out studio_core/embedded/emoji-flux
    python -m studio_core.embedded.training flux --recipe cpu-continue --init DIR --out DIR2
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import string
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio_core.embedded.training.recipe import log, strip_local_paths, warmup_cosine

__all__ = ["FLUX_RECIPES", "FluxRecipe", "FluxTrainer", "build_flux_components", "build_t5_tokenizer",
           "flow_loss", "main", "train_flux"]

EMOJI_SD = Path(__file__).resolve().parents[1] / "emoji-sd"


@dataclass(frozen=True)
class FluxRecipe:
    """Every setting of one training run of emoji-flux."""

    name: str
    image_size: int = 64
    heads: int = 4
    head_dim: int = 48
    rope_axes: tuple[int, int, int] = (8, 20, 20)  # (text index, row, column): sums to head_dim
    double_blocks: int = 3
    single_blocks: int = 4
    clip_hidden: int = 128
    clip_layers: int = 1
    clip_vocab: int = 2048
    t5_hidden: int = 128
    t5_layers: int = 3
    t5_ff: int = 384
    max_tokens: int = 24  # CLIP's positions: the longest caption is 21 tokens with its two specials
    t5_tokens: int = 16  # the T5 sequence the transformer attends to (the longest caption is 12 tokens)
    amp: str = "bfloat16"  # autocast dtype of the forward pass ("" for fp32): 1.55x faster steps on AVX-512 BF16
    steps: int = 3600
    batch: int = 48
    lr: float = 5e-4
    text_lr: float = 3e-4
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    budget_minutes: float = 38.0  # the training loop stops at `steps` or this, whichever comes first
    seed: int = 0
    threads: int = 0  # 0: torch's default
    limit: int | None = None  # first N training emoji only (tests)
    eval_captions: int = 200
    eval_steps: int = 28
    guidance_grid: tuple[float, ...] = (2.0, 3.5, 5.0, 7.0)
    notes: str = ""


FLUX_RECIPES: dict[str, FluxRecipe] = {
    "cpu": FluxRecipe(name="cpu", threads=2, notes="2 CPU cores, under 45 minutes"),
    # a second CPU stage: continues the text encoders + transformer of a finished `cpu` folder (``--init``)
    # with a fresh warm-up and cosine
    "cpu-continue": FluxRecipe(name="cpu-continue", threads=2, warmup=100, lr=3e-4, text_lr=2e-4,
                               notes="2 CPU cores, under 45 minutes, continuing a `cpu` run"),
    "gpu": FluxRecipe(name="gpu", steps=40000, batch=256, lr=5e-4, budget_minutes=20.0,
                      notes="one H100/H200, about 25 minutes"),
    "tiny": FluxRecipe(name="tiny", heads=2, head_dim=16, rope_axes=(4, 6, 6), double_blocks=1, single_blocks=1,
                       clip_hidden=32, clip_vocab=400, t5_hidden=32, t5_layers=1, t5_ff=64, steps=30, batch=8, amp="",
                       lr=2e-3, text_lr=2e-3, warmup=2, ema_decay=0.0, budget_minutes=3.0, limit=16,
                       eval_captions=2, eval_steps=2, guidance_grid=(2.0,), notes="for tests"),
}


# --------------------------------------------------------------------------- components


def build_t5_tokenizer(folder: str | Path, captions: list[str], max_length: int):
    """A ``T5TokenizerFast`` over a Unigram vocabulary learned from ``captions``: T5's special tokens, '▁',
    every character of the captions (so no caption needs <unk>), then each caption word as one piece.
    ``model_max_length`` is ``max_length``: ``generate`` pads the T5 sequence to it, not to FluxPipeline's 512."""
    from transformers import T5TokenizerFast

    chars = sorted(set("".join(captions)) | set(string.ascii_lowercase + string.digits) - {" "})
    words = sorted({w for c in captions for w in c.split()})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -8.0) for c in chars]
    pieces += [("▁" + w, -1.0) for w in words]
    tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
    tok.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def build_flux_components(recipe: FluxRecipe, clip_tok, t5_tok):
    """(text_encoder, text_encoder_2, transformer, scheduler) with fresh weights (callers seed torch first)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=recipe.clip_hidden, intermediate_size=4 * recipe.clip_hidden,
        num_hidden_layers=recipe.clip_layers, num_attention_heads=max(1, recipe.clip_hidden // 64),
        max_position_embeddings=recipe.max_tokens, bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id, hidden_act="quick_gelu"))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=recipe.t5_hidden, d_kv=32, d_ff=recipe.t5_ff, num_layers=recipe.t5_layers,
        num_heads=max(1, recipe.t5_hidden // 32), relative_attention_num_buckets=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
        decoder_start_token_id=0))
    assert sum(recipe.rope_axes) == recipe.head_dim, "rope_axes must sum to head_dim"
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=recipe.double_blocks, num_single_layers=recipe.single_blocks,
        attention_head_dim=recipe.head_dim, num_attention_heads=recipe.heads, joint_attention_dim=recipe.t5_hidden,
        pooled_projection_dim=recipe.clip_hidden, guidance_embeds=False, axes_dims_rope=recipe.rope_axes)
    # FLUX.1-dev's schedule: the shift follows the image's token count (at 64 tokens, exp(mu) = 1.6)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return clip, t5, transformer, scheduler


def _vae_for_flux(images: torch.Tensor, device: str):
    """emoji-sd's VAE with Flux's latent normalisation measured on ``images``; returns (vae, normalised latents)."""
    from diffusers import AutoencoderKL

    from studio_core.embedded.training.train import encode_latents

    vae = AutoencoderKL.from_pretrained(EMOJI_SD / "vae", local_files_only=True).eval().to(device)
    z = encode_latents(vae, images, device)
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=round(shift, 6), scaling_factor=round(scale, 6))
    return vae.cpu(), (z - shift) * scale


# --------------------------------------------------------------------------- training


def flow_loss(transformer, latents: torch.Tensor, pooled: torch.Tensor, seq: torch.Tensor, img_ids, txt_ids,
              generator: torch.Generator, logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Rectified-flow MSE on packed latents (B, tokens, 16): x_t = (1 - t) x0 + t eps, target eps - x0,
    t ~ logit-normal(logit_mean, logit_std)."""
    b = len(latents)
    t = torch.sigmoid(logit_mean + logit_std * torch.randn(b, generator=generator)).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    tt = t.view(b, 1, 1)
    xt = (1 - tt) * latents + tt * noise
    pred = transformer(hidden_states=xt, timestep=t, pooled_projections=pooled, encoder_hidden_states=seq,
                       txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    return F.mse_loss(pred.float(), (noise - latents).float())


class FluxTrainer:
    """Joint text encoders + transformer training state; ``step()`` runs one optimisation step."""

    def __init__(self, clip, t5, transformer, packed, clip_ids, t5_ids, recipe: FluxRecipe, device: str,
                 latent_hw: int):
        from diffusers import FluxPipeline

        self.clip, self.t5, self.tr, self.recipe, self.device = clip, t5, transformer, recipe, device
        self.packed, self.clip_ids, self.t5_ids = packed, clip_ids, t5_ids
        self.modules = (clip, t5, transformer)
        for m in self.modules:
            m.train().to(device)
        self.opt = torch.optim.AdamW([
            {"params": transformer.parameters(), "lr": recipe.lr},
            {"params": list(clip.parameters()) + list(t5.parameters()), "lr": recipe.text_lr},
        ], weight_decay=0.01)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.emas = [copy.deepcopy(m).eval().requires_grad_(False) for m in self.modules]
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, latent_hw // 2, latent_hw // 2, device, torch.float32)
        self.txt_ids = torch.zeros(t5_ids.shape[1], 3, device=device)
        self.g = torch.Generator().manual_seed(recipe.seed + 1)
        self.n = 0

    def encode(self, clip_ids: torch.Tensor, t5_ids: torch.Tensor, modules=None):
        clip, t5 = (modules or self.modules)[:2]
        return clip(clip_ids.to(self.device)).pooler_output, t5(t5_ids.to(self.device))[0]

    def loss(self, idx: torch.Tensor, generator: torch.Generator | None = None, modules=None) -> torch.Tensor:
        g, r = generator or self.g, self.recipe
        clip_ids, t5_ids = self.clip_ids[idx].clone(), self.t5_ids[idx].clone()
        drop = torch.rand(len(idx), generator=g) < r.cfg_dropout
        clip_ids[drop], t5_ids[drop] = self.clip_ids[-1], self.t5_ids[-1]  # the last row is the empty caption
        pooled, seq = self.encode(clip_ids, t5_ids, modules)
        return flow_loss((modules or self.modules)[2], self.packed[idx].to(self.device), pooled, seq, self.img_ids,
                         self.txt_ids, g, r.logit_mean, r.logit_std)

    def step(self, lr_scale: float) -> float:
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * lr_scale
        idx = torch.randint(0, len(self.packed) - 1, (self.recipe.batch,), generator=self.g)
        dev = "cuda" if str(self.device).startswith("cuda") else "cpu"
        with torch.autocast(dev, dtype=getattr(torch, self.recipe.amp or "float32"), enabled=bool(self.recipe.amp)):
            loss = self.loss(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.modules for p in m.parameters()], 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.n += 1
        decay = min(self.recipe.ema_decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            for ema, live in zip(self.emas, self.modules):
                torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1 - decay)
        return loss.item()


def _run_steps(trainer: FluxTrainer, recipe: FluxRecipe, log_every: int = 100) -> tuple[list[float], str]:
    """Warm-up, then cosine over the steps or the time budget, whichever runs out first; returns the losses
    and what stopped training."""
    budget_s, t0, losses = recipe.budget_minutes * 60, time.perf_counter(), []
    stopped_by = "steps"
    for step in range(recipe.steps):
        scale = warmup_cosine(step, recipe.warmup, recipe.steps, (time.perf_counter() - t0) / budget_s)
        losses.append(trainer.step(scale))
        elapsed = time.perf_counter() - t0
        if step % log_every == 0 or step == recipe.steps - 1:
            rate = (step + 1) * recipe.batch / elapsed
            log(f"flux step {step + 1}/{recipe.steps} loss {np.mean(losses[-100:]):.4f} lr x{scale:.3f} "
                f"({rate:.0f} img/s, {elapsed / 60:.1f} min)")
        if elapsed > budget_s:
            stopped_by = f"time budget ({recipe.budget_minutes:g} min)"
            log(f"flux: stopped by the time budget after {step + 1} steps")
            break
    return losses, stopped_by


def _ids(tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def save_flux_pipeline(out: Path, vae, clip, clip_tok, t5, t5_tok, transformer, scheduler):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    strip_local_paths(out)
    return pipe


def train_flux(recipe: FluxRecipe, out: Path, cache_dir: Path, device: str | None = None,
               init: Path | None = None, evaluate_after: bool = True) -> dict:
    """Run every stage of ``recipe`` and write the FluxPipeline folder ``out``; returns the training report.

    ``init``: a finished emoji-flux folder whose tokenizers, VAE, text encoders and transformer are continued."""
    from studio_core.embedded.training.data import load_or_build
    from studio_core.embedded.training.tokenizer import build_caption_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    t_start, timings = time.time(), {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    ds = load_or_build(cache_dir, recipe.image_size)
    train_idx = ds.train_indices[: recipe.limit] if recipe.limit else ds.train_indices
    captions = [ds.captions[i] for i in train_idx]
    images = torch.from_numpy(ds.images[train_idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    log(f"data: {len(ds)} emoji, {len(train_idx)} for training at {recipe.image_size} px")

    previous = None
    if init is not None:
        from diffusers import DiffusionPipeline

        prior = DiffusionPipeline.from_pretrained(init, local_files_only=True)
        clip_tok, t5_tok, vae = prior.tokenizer, prior.tokenizer_2, prior.vae
        clip, t5, transformer, scheduler = prior.text_encoder, prior.text_encoder_2, prior.transformer, prior.scheduler
        previous = json.loads((Path(init) / "training_report.json").read_text(encoding="utf-8"))
        log(f"continuing {init} (recipe {previous['recipe']['name']}, {previous['timings']['total_s'] / 60:.1f} min)")
        from studio_core.embedded.training.train import encode_latents

        latents = (encode_latents(vae, images, "cpu") - vae.config.shift_factor) * vae.config.scaling_factor
    else:
        all_caps = list(ds.captions)  # every caption's words and characters, held-out ones included
        clip_tok = build_caption_tokenizer(out / "tokenizer", captions, max_length=recipe.max_tokens,
                                           vocab_size=recipe.clip_vocab)
        t5_tok = build_t5_tokenizer(out / "tokenizer_2", all_caps, recipe.t5_tokens)
        clip, t5, transformer, scheduler = build_flux_components(recipe, clip_tok, t5_tok)
        t0 = time.time()
        vae, latents = _vae_for_flux(images, device)
        timings["vae_s"] = time.time() - t0
    from diffusers import FluxPipeline

    n, channels, hw = latents.shape[0], latents.shape[1], latents.shape[-1]
    packed = FluxPipeline._pack_latents(latents, n, channels, hw, hw).contiguous()  # 2x2 patches -> tokens
    clip_ids = _ids(clip_tok, captions + [""], recipe.max_tokens)
    t5_ids = _ids(t5_tok, captions + [""], recipe.t5_tokens)
    packed = torch.cat([packed, torch.zeros_like(packed[:1])])  # a row for the empty caption (never drawn)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("vae", vae), ("text_encoder", clip), ("text_encoder_2", t5), ("transformer", transformer))}
    log(f"parameters: {params}; {packed.shape[1]} image tokens per image")

    t0 = time.time()
    trainer = FluxTrainer(clip, t5, transformer, packed, clip_ids, t5_ids, recipe, device, hw)
    losses, stopped_by = _run_steps(trainer, recipe)
    timings["train_s"] = time.time() - t0

    ema_clip, ema_t5, ema_tr = (m.cpu() for m in trainer.emas)
    pipe = save_flux_pipeline(out, vae, ema_clip, clip_tok, ema_t5, t5_tok, ema_tr, scheduler)
    timings["total_s"] = time.time() - t_start
    curve = [round(float(np.mean(losses[i:i + 100])), 4) for i in range(0, len(losses), 100)]
    report = {
        "model": "emoji-flux", "recipe": asdict(recipe), "device": device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "parameters": params, "image_tokens": int(packed.shape[1]),
        "timings": timings, "steps_done": len(losses), "stopped_by": stopped_by,
        "final_loss": float(np.mean(losses[-200:])), "loss_curve_per_100_steps": curve,
        "vae": {"from": "emoji-sd", "shift_factor": vae.config.shift_factor,
                "scaling_factor": vae.config.scaling_factor},
        "data": {"emoji": len(ds), "train": int(len(train_idx)), "held_out": int(len(ds.held_out_indices)),
                 "dropped": ds.dropped},
        "continued_from": None if previous is None else {
            k: previous.get(k) for k in ("recipe", "device", "timings", "steps_done", "stopped_by", "final_loss",
                                         "loss_curve_per_100_steps", "fidelity", "rebuilt_from_log",
                                         "continued_from")},
    }
    # the report is on disk before the evaluation, so a run stopped while evaluating can still be continued
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if evaluate_after:
        t0 = time.time()
        from studio_core.embedded.training.evaluate import evaluate, write_gallery

        pipe.set_progress_bar_config(disable=True)
        report["fidelity"] = evaluate(pipe, ds, recipe)
        write_gallery(pipe, out / "gallery.png", report["fidelity"]["guidance"], recipe.eval_steps,
                      size=recipe.image_size)
        timings["eval_s"] = time.time() - t0
        timings["total_s"] = time.time() - t_start
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    defaults = {"guidance_scale": report.get("fidelity", {}).get("guidance", 3.5),
                "num_inference_steps": recipe.eval_steps, "height": recipe.image_size, "width": recipe.image_size,
                "domain": "emoji"}
    (out / "studio_defaults.json").write_text(json.dumps(defaults, indent=2) + "\n", encoding="utf-8")
    if init is not None and (Path(init) / "gallery.png").exists() and not (out / "gallery.png").exists():
        shutil.copy(Path(init) / "gallery.png", out / "gallery.png")
    from studio_core.embedded.training.model_card import write_model_card

    write_model_card(out, report)
    log(f"done in {timings['total_s'] / 60:.1f} min")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studio_core.embedded.training flux",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(FLUX_RECIPES), default="cpu")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the rendered data set is kept")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--budget-minutes", type=float, default=None, help="override the recipe's time budget")
    p.add_argument("--init", type=Path, default=None, help="continue this finished emoji-flux folder")
    p.add_argument("--no-eval", action="store_true", help="skip prompt fidelity and the gallery")
    a = p.parse_args(argv)
    recipe = FLUX_RECIPES[a.recipe]
    if a.steps is not None:
        recipe = replace(recipe, steps=a.steps)
    if a.budget_minutes is not None:
        recipe = replace(recipe, budget_minutes=a.budget_minutes)
    if a.init is not None and a.init.resolve() == a.out.resolve():
        p.error("--init and --out must be different folders")
    train_flux(recipe, a.out, a.cache_dir, a.device, a.init, evaluate_after=not a.no_eval)


if __name__ == "__main__":
    main()
