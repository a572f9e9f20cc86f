from transformers import CLIPTokenizer

from studio_core.embedded.training.tokenizer import build_caption_tokenizer


def test_round_trip_on_every_caption(emoji32, tmp_path):
    train = [emoji32.captions[i] for i in emoji32.train_indices]
    tok = build_caption_tokenizer(tmp_path, train, max_length=32)
    assert (tmp_path / "vocab.json").exists() and (tmp_path / "merges.txt").exists()
    for cap in emoji32.captions:  # held-out captions too: their words all occur in training
        ids = tok(cap).input_ids
        assert len(ids) <= 32 and tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == cap.lower().replace(" ", "")
    # whole words are single tokens, as in CLIP
    assert tok.convert_ids_to_tokens(tok("man scientist: dark skin tone").input_ids)[1:-1] == [
        "man</w>", "scientist</w>", ":</w>", "dark</w>", "skin</w>", "tone</w>"]


def test_reloads_as_sd_style_clip_tokenizer(tmp_path):
    build_caption_tokenizer(tmp_path, ["grinning face", "red heart"], max_length=16)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tok("grinning face", padding="max_length", max_length=16).input_ids
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[3] == tok.eos_token_id
    assert tok.pad_token_id == tok.eos_token_id  # SD 1.5 pads with <|endoftext|>
