"""Loading the images of a request: data URLs, http(s) URLs and (when allowed) local files.

Everything here reads what a client sent, so every failure is an `ImageLoadError` (a
`MaxError` with a `code` the server puts in its 4xx body), never a crash: a URL scheme we
do not fetch, a local file outside the directory the operator allowed, a fetch that fails,
is too slow or too large, bytes that are not an image, and decompression bombs (a small
file that decodes to a huge number of pixels).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from max.errors import MaxError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # a fetched or embedded image file, encoded
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # width x height: about 120 MB once decoded to RGB
DEFAULT_FETCH_TIMEOUT_S = 5.0

# Formats worth decoding from untrusted input. Pillow knows many more; some call out to
# other programs (EPS runs Ghostscript) or are rarely seen outside exploits.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

_CHUNK = 64 * 1024


class ImageLoadError(MaxError):
    """An image a request names cannot be used; `code` is the API's error code for it."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def load_image(
    url: str,
    *,
    allowed_local_media_path: Path | None,
    timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """The image at `url`, decoded to RGB.

    `url` is a base64 data URL (`data:image/png;base64,...`), an http(s) URL (fetched within
    `timeout_s` seconds, at most `max_bytes` bytes), or a `file://` URL or plain path, which
    is read only when `allowed_local_media_path` is set and the file (symlinks resolved) lies
    inside it; relative paths are taken relative to that directory. Raises ImageLoadError.
    """
    if not isinstance(url, str) or not url.strip():
        raise ImageLoadError("the image URL is empty", "invalid_image_url")
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() in ("http", "https") and (not parts.hostname or parts.port == 0):
            raise ValueError("no host")
    except ValueError:  # a bad IPv6 literal, a port that is not a number or out of range...
        raise ImageLoadError("the image URL is not a valid URL", "invalid_image_url") from None
    scheme = parts.scheme.lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, max_bytes)
    elif scheme in ("http", "https"):
        data = _fetch(url, timeout_s, max_bytes)
    elif scheme in ("file", ""):
        data = _local_file_bytes(url, scheme, allowed_local_media_path, max_bytes)
    else:
        raise ImageLoadError(
            f"unsupported image URL scheme {scheme!r}: use a data URL (data:image/...;base64,...), "
            "an http(s) URL, or a file:// URL where the server allows local files",
            "invalid_image_url",
        )
    return decode_image(data, max_pixels)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """`data` (an encoded image file) decoded to an RGB image; ImageLoadError if it is not
    an image of a known format, is truncated or corrupt, or has more than `max_pixels`."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise ImageLoadError(f"the image has more than {max_pixels} pixels", "image_too_large") from None
    except Exception:  # UnidentifiedImageError and whatever a plugin raises on garbage
        raise ImageLoadError(
            f"the data is not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    # Checked on the header, before any pixel is decoded: a few KB of PNG can inflate to
    # gigabytes. (Pillow's own MAX_IMAGE_PIXELS is global and only warns below twice it.)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"the image is {width}x{height} pixels, more than the limit of {max_pixels}", "image_too_large"
        )
    try:
        image.load()
        # The first frame of an animation; palette, alpha and CMYK images become RGB.
        return image.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageLoadError(f"the image has more than {max_pixels} pixels", "image_too_large") from None
    except Exception as e:  # truncated or corrupt data: OSError, SyntaxError, ValueError...
        raise ImageLoadError(f"the image data is truncated or corrupt ({_reason(e)})") from None


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 data URL `data:image/<type>;base64,<data>`."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageLoadError("a data URL needs a ',' before its data", "invalid_image_url")
    media = header[len("data:") :].split(";")
    if not media[0].lower().startswith("image/"):
        raise ImageLoadError(f"the data URL's media type {media[0]!r} is not an image type", "invalid_image_url")
    if "base64" not in (p.strip().lower() for p in media[1:]):
        raise ImageLoadError("only base64 data URLs are accepted (data:image/...;base64,...)", "invalid_image_url")
    payload = "".join(payload.split())  # line breaks in long base64 text are common
    # 4 characters of base64 hold 3 bytes: refuse before decoding something too large.
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise ImageLoadError(f"the image is larger than {max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError("the data URL's data is not valid base64", "invalid_image") from None


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib would also follow one to ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ImageLoadError("the image URL redirects to a non-http(s) URL", "invalid_image_url")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The body at an http(s) URL: at most `max_bytes`, within about `timeout_s` seconds."""
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    request = urllib.request.Request(url, headers={"User-Agent": "max-serve", "Accept": "image/*"})
    # The socket timeout bounds each connect and read; the deadline bounds the whole body
    # (a server dripping a byte at a time would otherwise hold the request for ever).
    deadline = time.monotonic() + timeout_s
    shown = _shown(url)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise ImageLoadError(f"the image at {shown} is larger than {max_bytes} bytes", "image_too_large")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                # read1: what has arrived (read would wait for a whole chunk).
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_bytes:
                    raise ImageLoadError(f"the image at {shown} is larger than {max_bytes} bytes", "image_too_large")
                chunks.append(chunk)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageLoadError(f"fetching {shown} failed: HTTP {e.code}", "image_fetch_failed") from None
    except TimeoutError:
        raise ImageLoadError(f"fetching {shown} took longer than {timeout_s:g} s", "image_fetch_failed") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise ImageLoadError(f"fetching {shown} took longer than {timeout_s:g} s", "image_fetch_failed") from None
        raise ImageLoadError(f"fetching {shown} failed: {_reason_text(e.reason)}", "image_fetch_failed") from None
    except Exception as e:  # connection reset, bad status line, invalid URL...
        raise ImageLoadError(f"fetching {shown} failed: {type(e).__name__}", "image_fetch_failed") from None


def _reason_text(reason: object) -> str:
    return _reason(reason) if isinstance(reason, Exception) else str(reason)[:200]


def _shown(url: str) -> str:
    """The URL as errors show it: without credentials or query, and not too long."""
    parts = urllib.parse.urlsplit(url)  # load_image checked that it parses
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    text = f"{parts.scheme}://{host}{parts.path}"
    return text if len(text) <= 120 else text[:117] + "..."


def _local_file_bytes(url: str, scheme: str, allowed: Path | None, max_bytes: int) -> bytes:
    """A local file's bytes, if it lies inside the allowed directory."""
    if allowed is None:
        raise ImageLoadError(
            "local image files are not allowed on this server (the operator can allow a directory "
            "with --allowed-local-media-path)",
            "invalid_image_url",
        )
    if scheme == "file":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageLoadError("a file:// URL must name a local file (no host)", "invalid_image_url")
        path = Path(urllib.parse.unquote(parts.path))
    else:
        path = Path(url)
    root = Path(allowed).resolve()
    try:
        # Symlinks and '..' resolved first: a link inside the directory may point out of it.
        resolved = (root / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise ImageLoadError("the image file does not exist in the allowed directory", "invalid_image_url") from None
    if not resolved.is_relative_to(root):
        raise ImageLoadError("the image file is outside the directory this server allows", "invalid_image_url")
    try:
        # Opened without following a last-moment symlink swap, and only as a regular file
        # (a FIFO would block, a device would never end).
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise ImageLoadError("the image file cannot be read", "invalid_image_url") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageLoadError("the image path is not a regular file", "invalid_image_url")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError:
        raise ImageLoadError("the image file cannot be read", "invalid_image_url") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageLoadError(f"the image file is larger than {max_bytes} bytes", "image_too_large")
    return data
