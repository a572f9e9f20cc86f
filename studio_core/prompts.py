"""Named prompt sets, so a study can say ``prompt_set: emoji-8`` instead of listing prompts."""

from __future__ import annotations

__all__ = ["GALLERY_PROMPTS", "PROMPT_SETS"]

# the embedded model's gallery: faces, objects, a flag, people with skin tones, a keycap
GALLERY_PROMPTS = [
    "grinning face", "red heart", "dog face", "pizza", "rocket", "flag: Japan", "man scientist: dark skin tone",
    "woman astronaut: light skin tone", "thumbs up: medium skin tone", "sun", "snowman", "birthday cake",
    "rainbow", "Japanese castle", "keycap: 7", "face with tears of joy",
]

PROMPT_SETS: dict[str, list[str]] = {
    "emoji-gallery": GALLERY_PROMPTS,
    # a cheaper mix of the same kinds, for sweeps on a CPU
    "emoji-8": ["grinning face", "red heart", "pizza", "rocket", "flag: Japan",
                "man scientist: dark skin tone", "sun", "keycap: 7"],
    "emoji-4": ["grinning face", "pizza", "flag: Japan", "thumbs up: medium skin tone"],
}
