"""load_image on what clients send: data URLs (PNG, JPEG), bad base64, bytes that are not an
image, truncated files, http URLs served by a local http.server (slow, large, missing),
local files inside and outside the allowed directory (symlink escapes included), other
schemes, and decompression bombs. Each failure is an ImageLoadError with its code."""

import base64
import http.server
import io
import os
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from max.errors import MaxError
from max.pipelines.lib.tokens.image_input import ImageLoadError, decode_image, load_image


def _image(size=(40, 30), color=(200, 30, 60), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _load(url: str, allowed=None, timeout_s: float = 2.0, max_bytes: int = 1 << 20, **kw) -> Image.Image:
    return load_image(url, allowed_local_media_path=allowed, timeout_s=timeout_s, max_bytes=max_bytes, **kw)


def _fails(code: str, url: str, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        _load(url, **kw)
    assert isinstance(info.value, MaxError) and info.value.code == code, (info.value.code, str(info.value))
    return str(info.value)


def test_png_data_url_decodes_to_the_same_rgb_pixels():
    original = _image()
    image = _load(_data_url(_encoded(original)))
    assert image.mode == "RGB" and image.size == (40, 30)
    assert image.tobytes() == original.tobytes()


def test_jpeg_and_rgba_and_palette_images_become_rgb():
    jpeg = _load(_data_url(_encoded(_image(), "JPEG"), "image/jpeg"))
    assert jpeg.mode == "RGB" and jpeg.size == (40, 30)
    r, g, b = jpeg.getpixel((20, 15))
    assert abs(r - 200) < 8 and abs(g - 30) < 8 and abs(b - 60) < 8
    rgba = _load(_data_url(_encoded(_image(mode="RGBA", color=(1, 2, 3, 128)))))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (1, 2, 3)
    palette = _load(_data_url(_encoded(_image().convert("P"))))
    assert palette.mode == "RGB"
    # Line breaks inside the base64 text (as some encoders write it) are ignored.
    text = base64.encodebytes(_encoded(_image())).decode()
    assert _load(f"data:image/png;base64,{text}").size == (40, 30)


def test_bad_data_urls_are_refused():
    assert "base64" in _fails("invalid_image", "data:image/png;base64,@@@not-base64@@@")
    assert "not an image" in _fails("invalid_image", _data_url(b"just some text, not an image"))
    assert "truncated" in _fails("invalid_image", _data_url(_encoded(_image((200, 200)))[:300]))
    _fails("invalid_image_url", "data:text/plain;base64,aGVsbG8=")
    _fails("invalid_image_url", "data:image/png,rawbytes")
    _fails("invalid_image_url", "data:image/png;base64")
    _fails("image_too_large", _data_url(b"\0" * 5000), max_bytes=4000)
    _fails("invalid_image_url", "")
    _fails("invalid_image_url", "   ")


def test_malformed_urls_are_refused():
    for url in ("http://[::1", "http://example.com:99999/", "http://localhost:abc/", "http://", "http:///x", "https://:80/"):
        assert "not a valid URL" in _fails("invalid_image_url", url)
    _fails("image_fetch_failed", "https://a b/c.png")
    _fails("image_fetch_failed", "http://\x00/")


def test_other_schemes_are_refused():
    for url in ("ftp://example.com/cat.png", "javascript:alert(1)", "gopher://x/1", "s3://bucket/cat.png"):
        message = _fails("invalid_image_url", url)
        assert "unsupported image URL scheme" in message


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels of grey, with a tiny compressed body."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1) * 16, 9)  # far too short: never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding():
    bomb = _bomb_png(100_000, 100_000)  # 10 gigapixels in under 2 KB
    assert len(bomb) < 2048
    assert "pixels" in _fails("image_too_large", _data_url(bomb))
    # Under Pillow's own limit, ours still applies.
    _fails("image_too_large", _data_url(_encoded(_image((300, 300)))), max_pixels=200 * 200)
    assert _load(_data_url(_encoded(_image((300, 300)))), max_pixels=300 * 300).size == (300, 300)
    with pytest.raises(ImageLoadError):
        decode_image(_bomb_png(20_000, 20_000))


class _Handler(http.server.BaseHTTPRequestHandler):
    png = _encoded(_image((64, 48)))

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/cat.png":
            self._send(self.png)
        elif self.path == "/big.png":
            self._send(self.png + b"\0" * (1 << 20))
        elif self.path == "/big-unannounced.png":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the limit applies while reading
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass  # the client stopped reading (size limit)
        elif self.path == "/slow.png":
            time.sleep(3)
            self._send(self.png)
        elif self.path == "/drip.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            try:
                for i in range(len(self.png)):
                    self.wfile.write(self.png[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass  # the client gave up (timeout)
        elif self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/cat.png")
            self.end_headers()
        elif self.path == "/to-cat":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
        elif self.path == "/text":
            self._send(b"<html>not an image</html>")
        else:
            self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client stopped reading (size limit)


@pytest.fixture(scope="module")
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # the local server, never a proxy from the environment


def test_http_image_is_fetched(http_url):
    assert _load(f"{http_url}/cat.png").size == (64, 48)
    assert _load(f"{http_url}/to-cat").size == (64, 48)  # http redirects are followed


def test_http_failures(http_url):
    assert "HTTP 404" in _fails("image_fetch_failed", f"{http_url}/missing.png")
    assert "larger than" in _fails("image_too_large", f"{http_url}/big.png")
    _fails("image_too_large", f"{http_url}/big-unannounced.png")
    _fails("invalid_image", f"{http_url}/text")
    start = time.monotonic()
    assert "longer than 0.5 s" in _fails("image_fetch_failed", f"{http_url}/slow.png", timeout_s=0.5)
    # A body that trickles in still ends at about the timeout (each read is quick).
    _fails("image_fetch_failed", f"{http_url}/drip.png", timeout_s=0.5)
    assert time.monotonic() - start < 2.5
    _fails("invalid_image_url", f"{http_url}/to-ftp")
    port = http_url.rsplit(":", 1)[1]
    closed = f"http://127.0.0.1:{int(port) + 1 if int(port) < 65535 else 1}/x.png"
    _fails("image_fetch_failed", closed)
    message = _fails("image_fetch_failed", "http://user:secret@127.0.0.1:1/a.png?token=abc")
    assert "secret" not in message and "token" not in message


def test_local_files_only_inside_the_allowed_directory(tmp_path):
    allowed = tmp_path / "media"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "cat.png").write_bytes(_encoded(_image((10, 12))))
    outside = tmp_path / "secret.png"
    outside.write_bytes(_encoded(_image((5, 5))))
    inside = allowed / "sub" / "cat.png"
    # Not allowed at all without a directory.
    assert "--allowed-local-media-path" in _fails("invalid_image_url", inside.as_uri())
    _fails("invalid_image_url", str(inside))
    assert _load(inside.as_uri(), allowed=allowed).size == (10, 12)
    assert _load(str(inside), allowed=allowed).size == (10, 12)
    assert _load("sub/cat.png", allowed=allowed).size == (10, 12)  # relative to the directory
    assert _load(f"file://localhost{inside}", allowed=allowed).size == (10, 12)
    assert "outside" in _fails("invalid_image_url", outside.as_uri(), allowed=allowed)
    _fails("invalid_image_url", str(allowed / ".." / "secret.png"), allowed=allowed)
    _fails("invalid_image_url", "../secret.png", allowed=allowed)
    _fails("invalid_image_url", f"file://otherhost{inside}", allowed=allowed)
    _fails("invalid_image_url", "sub/\x00cat.png", allowed=allowed)
    _fails("invalid_image_url", "file:///%00", allowed=allowed)
    _fails("invalid_image_url", (allowed / "missing.png").as_uri(), allowed=allowed)
    # A symlink inside the directory that points out of it is refused.
    os.symlink(outside, allowed / "link.png")
    assert "outside" in _fails("invalid_image_url", (allowed / "link.png").as_uri(), allowed=allowed)
    os.symlink(tmp_path, allowed / "up")
    _fails("invalid_image_url", str(allowed / "up" / "secret.png"), allowed=allowed)
    # Not a regular file: a directory, a FIFO (reading it would block).
    _fails("invalid_image_url", str(allowed / "sub"), allowed=allowed)
    os.mkfifo(allowed / "fifo.png")
    _fails("invalid_image_url", str(allowed / "fifo.png"), allowed=allowed)
    big = allowed / "big.png"
    big.write_bytes(_encoded(_image()) + b"\0" * 5000)
    _fails("image_too_large", str(big), allowed=allowed, max_bytes=4000)
    (allowed / "notes.png").write_text("not an image")
    _fails("invalid_image", str(allowed / "notes.png"), allowed=allowed)


def test_random_urls_only_ever_raise_image_load_errors(tmp_path):
    """Seeded: strings built from URL syntax's awkward characters after each scheme's
    prefix; load_image either loads or raises ImageLoadError, nothing else."""
    import random

    rng = random.Random(1129)
    prefixes = ["http://127.0.0.1", "http://[", "https://", "file:", "file://", "data:image/png;base64,", "data:", "", "/", "ftp:"]
    alphabet = ["[", "]", ":", "%", "%00", "\x00", "/", "@", "#", "?", "..", "1", "65536", "a", " ", "\n", "é", "\\", ";", ","]
    for _ in range(300):
        url = rng.choice(prefixes) + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        try:
            _load(url, allowed=tmp_path, timeout_s=0.5)
        except ImageLoadError:
            pass
