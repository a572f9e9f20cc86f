"""Few-step students made in the studio: latent consistency distillation (``lcm.py``) of the embedded emoji-sd or a
user's SD 1.5- or SDXL-shaped pipeline, run by ``python -m studio_core distill`` (``cli.py`` -> ``run.py``), saved
(``save.py``), evaluated (``evaluate.py``) and carded (``card.py``)."""
