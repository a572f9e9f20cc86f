"""The studio's browser UI (Gradio). It never imports torch or diffusers: it calls studio_core."""
