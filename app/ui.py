"""Gradio layout and event wiring for the studio (a first, minimal generate tab)."""

from __future__ import annotations

import gradio as gr

from studio_core.generate import generate_one, model_defaults
from studio_core.models import EMBEDDED_MODEL_NAME, ModelLoadError, resolve_model

__all__ = ["build_demo"]


def _on_generate(model: str, prompt: str, seed: float, steps: float, guidance: float):
    try:
        image, info = generate_one(model, prompt, seed, int(steps), float(guidance))
    except (ValueError, ModelLoadError) as exc:
        raise gr.Error(str(exc)) from None
    return _pixel_upscale(image), info


def _pixel_upscale(image, target: int = 256):
    """Nearest-neighbour upscale for display, so a 32x32 image shows its pixels rather than a blur."""
    k = max(1, target // max(image.shape[:2]))
    return image.repeat(k, axis=0).repeat(k, axis=1)


def build_demo(model: str = EMBEDDED_MODEL_NAME) -> gr.Blocks:
    defaults = model_defaults(resolve_model(model))
    with gr.Blocks(title="Diffusion Efficiency Studio") as demo:
        gr.Markdown("# Diffusion Efficiency Studio\nGenerate with the embedded emoji model (32x32, CPU-friendly).")
        with gr.Row():
            with gr.Column():
                model_box = gr.Textbox(value=model, label="Model (embedded name, folder, or cached repo id)")
                prompt = gr.Textbox(value="grinning face", label="Prompt")
                seed = gr.Number(value=0, precision=0, label="Seed")
                steps = gr.Slider(1, 200, value=defaults["num_inference_steps"], step=1, label="Steps")
                guidance = gr.Slider(0, 15, value=defaults["guidance_scale"], step=0.5, label="Guidance scale")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                image = gr.Image(label="Image", type="numpy", height=256, show_label=True)
                info = gr.JSON(label="Settings used")
        # event wiring last; one generation at a time
        button.click(_on_generate, [model_box, prompt, seed, steps, guidance], [image, info],
                     concurrency_limit=1, concurrency_id="generate", api_name="generate")
    return demo
