"""The prompts of logit verification: text, and for vision-language models text with images.

A prompts file is a JSON list (each entry a string, or `{"prompt": str, "images": [file,
...]}` with image paths relative to the file) or a text file with one prompt per line.
A prompt with images runs as one user chat message (the images, then the text) through
the model's chat template and image processor; a prompt without runs as plain text. Both
frameworks get the same token ids and pixels. Logits files name a prompt by `key`: its
text, followed by its images' file names when it has any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.hub.embedded_models import cache_dir

DEFAULT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Translate to French: I would like a cup of coffee, please.",
    "1, 1, 2, 3, 5, 8, 13,",
    "日本の首都は東京です。大阪は",
    (
        "The history of the printing press begins in the fifteenth century, when Johannes "
        "Gutenberg combined movable metal type, oil-based inks and a wooden press adapted from "
        "those used to make wine. Within a few decades presses had spread to more than two "
        "hundred cities across Europe, and the price of books fell sharply. Scholars argue about "
        "how quickly the new technology changed reading habits, but most agree that it made "
        "religious, scientific and political ideas travel faster than ever before. In the "
        "centuries that followed,"
    ),
]


@dataclass(frozen=True)
class VerificationPrompt:
    """A prompt's text and the image files it shows (none for a text prompt)."""

    text: str
    images: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """How logits files name this prompt."""
        if not self.images:
            return self.text
        return f"{self.text} [images: {', '.join(Path(p).name for p in self.images)}]"


def as_prompt(prompt: str | VerificationPrompt) -> VerificationPrompt:
    """A plain string is a text prompt."""
    return prompt if isinstance(prompt, VerificationPrompt) else VerificationPrompt(prompt)


def read_prompts(path: str) -> list[VerificationPrompt]:
    """The prompts of a file (see the module docstring)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as e:
        raise MaxError(f"cannot read {path}: {e}") from None
    if not path.endswith(".json"):
        return [VerificationPrompt(line) for line in text.splitlines() if line.strip()]
    try:
        entries = json.loads(text)
    except ValueError as e:
        raise MaxError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise MaxError(f"{path} must hold a JSON list of prompts")
    prompts = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            prompts.append(VerificationPrompt(entry))
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("prompt"), str) and isinstance(entry.get("images", []), list)):
            raise MaxError(f"{path}: prompt {i} must be a string or {{'prompt': str, 'images': [file, ...]}}")
        images = []
        for name in entry.get("images", []):
            image = file.parent / str(name)
            if not image.is_file():
                raise MaxError(f"{path}: prompt {i} names image {name!r}, which is not a file")
            images.append(str(image))
        prompts.append(VerificationPrompt(entry["prompt"], tuple(images)))
    return prompts


def default_image_prompts() -> list[VerificationPrompt]:
    """The default prompts of a vision-language pipeline: three text prompts, one image, and
    two images of other sizes and aspect ratios in one prompt (drawn once, with pillow, into
    the cache directory)."""
    folder = cache_dir() / "verification-images"
    folder.mkdir(parents=True, exist_ok=True)
    bars, shapes = folder / "bars-v1.png", folder / "shapes-v1.png"
    if not bars.is_file() or not shapes.is_file():
        _draw(bars, shapes)
    return [
        *(VerificationPrompt(p) for p in DEFAULT_PROMPTS[:3]),
        VerificationPrompt("What does this chart show? Which bar is the tallest?", (str(bars),)),
        VerificationPrompt("Compare the two pictures.", (str(bars), str(shapes))),
    ]


def _draw(bars: Path, shapes: Path) -> None:
    from PIL import Image, ImageDraw

    chart = Image.new("RGB", (224, 168), "white")
    draw = ImageDraw.Draw(chart)
    for i, (height, colour) in enumerate([(60, "red"), (120, "blue"), (90, "green"), (30, "orange")]):
        draw.rectangle([20 + 50 * i, 160 - height, 55 + 50 * i, 160], fill=colour)
    chart.save(bars)
    picture = Image.new("RGB", (120, 300), (230, 230, 250))
    draw = ImageDraw.Draw(picture)
    draw.ellipse([10, 10, 110, 110], fill="purple")
    draw.polygon([(60, 140), (10, 280), (110, 280)], fill="teal")
    picture.save(shapes)
