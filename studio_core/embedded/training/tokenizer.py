"""A CLIP tokenizer whose byte-level BPE vocabulary is learned from the training captions.

The normaliser, pre-tokeniser and special tokens are those of ``transformers.CLIPTokenizer`` (SD
1.5's tokenizer) and the files are written in the same layout as SD 1.5's ``tokenizer/`` folder
(``vocab.json`` + ``merges.txt``, special tokens last); only the merges are ours, learned with the
``tokenizers`` library's BPE trainer on the captions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["BOS", "EOS", "build_caption_tokenizer", "write_clip_vocab"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _learn_merges(captions: list[str], vocab_size: int) -> list[tuple[str, str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer().backend_tokenizer  # CLIP's normaliser and pre-tokeniser
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer = reference.normalizer
    learner.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    learner.train_from_iterator(captions, trainer=trainer)
    merges = json.loads(learner.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def write_clip_vocab(folder: str | Path, captions: Iterable[str], vocab_size: int = 4096) -> None:
    """Write ``vocab.json`` and ``merges.txt`` in OpenAI CLIP's layout, learned from ``captions``."""
    from tokenizers import pre_tokenizers

    merges = _learn_merges(list(captions), vocab_size)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [BOS, EOS]
    vocab = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_caption_tokenizer(folder: str | Path, captions: Iterable[str], max_length: int = 32, vocab_size: int = 4096):
    """Write the vocabulary into ``folder`` and return a ``CLIPTokenizer`` saved there."""
    from transformers import CLIPTokenizer

    write_clip_vocab(folder, captions, vocab_size)
    tok = CLIPTokenizer(vocab=str(Path(folder) / "vocab.json"), merges=str(Path(folder) / "merges.txt"),
                        model_max_length=max_length)
    tok.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)
