import gradio as gr
import pytest

from app.ui import _on_generate, build_demo


def test_demo_builds_on_the_embedded_model():
    demo = build_demo()
    assert isinstance(demo, gr.Blocks)
    assert any(fn.api_name == "generate" for fn in demo.fns.values())


def test_generate_returns_an_image_and_the_settings_used(embedded_pipe):
    image, info = _on_generate("emoji-sd", "red heart", 0, 4, 3.0)
    assert image.shape == (256, 256, 3)  # 32x32 shown with 8x8 blocks per pixel
    assert (image[:8, :8] == image[0, 0]).all()
    assert info["steps"] == 4 and info["prompt"] == "red heart"


@pytest.mark.parametrize("prompt, steps, guidance, seed, message", [
    ("   ", 10, 3.0, 0, "prompt is empty"),
    ("red heart", 0, 3.0, 0, "steps=0 is out of range"),
    ("red heart", 10, -1.0, 0, "guidance=-1.0 is negative"),
    ("red heart", 10, 3.0, -5, "seed=-5 is out of range"),
    ("red heart", 10, 3.0, None, "seed=None is not a whole number"),
])
def test_bad_input_is_a_readable_error(prompt, steps, guidance, seed, message):
    with pytest.raises(gr.Error, match=message):
        _on_generate("emoji-sd", prompt, seed, steps, guidance)


def test_missing_model_folder_is_a_readable_error(tmp_path):
    with pytest.raises(gr.Error, match="model folder not found"):
        _on_generate(str(tmp_path / "nope"), "red heart", 0, 2, 3.0)
