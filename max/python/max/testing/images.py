"""Images for tests: random RGB pictures, as PNG bytes and as the base64 data URLs that
chat requests (and lm-eval) carry."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def random_picture(width: int, height: int, seed: int) -> Image.Image:
    """An RGB picture of random pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    """The picture as a PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image: Image.Image) -> str:
    """The picture as a `data:image/png;base64,...` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
