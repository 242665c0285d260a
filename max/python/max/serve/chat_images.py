"""The images of a chat request: what the server accepts, and loading them off the event loop.

The chat request (chat_request.py) collects each `image_url` part as an `ImagePart` (URL
and field path); here they are checked against the server's media options (how many per
prompt, where local files may come from, how long a fetch may take, how large an image may
be) and loaded in worker threads, all of a request's images at once. Every failure is a 400
in OpenAI's error shape whose `param` names the image's field, e.g.
`messages[0].content[1].image_url`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from max.pipelines.lib.tokens.image_input import (
    DEFAULT_FETCH_TIMEOUT_S,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageLoadError,
    load_image,
)
from max.serve.api_errors import ApiError
from max.serve.chat_request import ImagePart

DEFAULT_MAX_IMAGES = 8  # per prompt, as --limit-mm-per-prompt '{"image": 8}'

# Image loads wait on the network for up to the fetch timeout: they get threads of their own,
# so that slow fetches never hold up the tokenization of other requests (asyncio's default
# pool, a few threads on a small machine).
_LOADERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="max-image-load")
# A request waits for its images at most the fetch timeout plus this: the fetch's own
# timeouts do not bound a DNS lookup that hangs, and decoding takes time too.
LOAD_GRACE_S = 10.0


@dataclass(frozen=True)
class MediaOptions:
    """What the server accepts as images (the serve flags set these)."""

    max_images: int = DEFAULT_MAX_IMAGES
    allowed_local_media_path: Path | None = None  # None: no local files
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def check_image_count(parts: list[ImagePart], options: MediaOptions) -> None:
    """400 if the request holds more images than the server takes per prompt."""
    if len(parts) > options.max_images:
        first_extra = parts[options.max_images].param.removesuffix(".image_url")
        raise ApiError(
            400,
            f"the request holds {len(parts)} images; this server takes at most {options.max_images} per prompt "
            "(its --limit-mm-per-prompt)",
            param=first_extra,
            code="too_many_images",
        )


def images_not_supported(parts: list[ImagePart]) -> ApiError:
    """The error for an image sent to a model that takes none."""
    return ApiError(
        400,
        "this model does not take images: send text content only",
        param=parts[0].param.removesuffix(".image_url"),
        code="images_not_supported",
    )


async def load_request_images(parts: list[ImagePart], options: MediaOptions) -> list[Any]:
    """The request's images decoded to RGB (PIL images), loaded concurrently in threads;
    400 naming the first image that cannot be loaded."""
    check_image_count(parts, options)

    def load(part: ImagePart) -> Any:
        return load_image(
            part.url,
            allowed_local_media_path=options.allowed_local_media_path,
            timeout_s=options.fetch_timeout_s,
            max_bytes=options.max_image_bytes,
            max_pixels=options.max_image_pixels,
        )

    loop = asyncio.get_running_loop()
    loads = [loop.run_in_executor(_LOADERS, load, part) for part in parts]
    budget = options.fetch_timeout_s + LOAD_GRACE_S
    try:
        _, pending = await asyncio.wait(loads, timeout=budget)
    finally:
        for future in loads:  # late or abandoned (client gone): the thread ends on its own
            future.cancel()
    images = []
    for part, future in zip(parts, loads, strict=True):
        if future in pending:
            raise ApiError(400, f"loading the image took longer than {budget:g} s", param=part.param, code="image_fetch_failed")
        error = future.exception()
        if isinstance(error, ImageLoadError):
            raise ApiError(400, str(error), param=part.param, code=error.code)
        if error is not None:
            raise error
        images.append(future.result())
    return images
