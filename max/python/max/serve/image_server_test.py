"""Images in chat requests through the HTTP server (uvicorn on a local port, the official
`openai` client) with a fake engine that records what each request brought.

A vision-language tokenizer (the tiny Qwen2.5-VL processor files) serves: data URLs (the
shape lm-eval's local-chat-completions sends), http URLs from a local http.server, local
files under the allowed directory, the string form of `image_url`, several images in one
message, streaming and /tokenize. The engine must receive the prompt ids and ImageInputs
that the tokenizer makes of the same messages and decoded images. Every bad image is a 400
in OpenAI's shape whose `param` names the part, and the server goes on serving; a
text-only model refuses image parts; text-only chats render exactly as before.
"""

import base64
import http.server
import io
import os
import threading
import time
import types

import httpx
import numpy as np
import openai
import pytest

from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer
from max.pipelines.lib.weights import WeightsFormat
from max.serve.api_server import ServerState, create_app
from max.serve.chat_images import MediaOptions
from max.testing.app_server import AppServer
from max.testing.fake_engine import FakeEngine
from max.testing.images import png_bytes as _png
from max.testing.images import png_data_url as _data_url
from max.testing.images import random_picture as _picture
from max.testing.tiny_vl_processor import IMAGE_TOKEN_ID, VOCAB_SIZE, write_vl_processor_files

MODEL = "tiny-vl"
MAX_SEQ_LEN = 512
MAX_IMAGES = 3
MAX_IMAGE_BYTES = 200_000


RED = _picture(100, 60, 0)
WIDE = _picture(200, 50, 1)
SQUARE = _picture(64, 64, 2)


class _Images(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/wide.png":
            body = _png(WIDE)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/slow.png":
            time.sleep(3)
            self.send_error(500)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def image_host():
    os.environ["no_proxy"] = "*"  # the local image server is never reached through a proxy
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_vl_processor_files(tmp_path_factory.mktemp("vl"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "allowed").mkdir()
    (root / "allowed" / "square.png").write_bytes(_png(SQUARE))
    (root / "secret.png").write_bytes(_png(SQUARE))
    os.symlink(root / "secret.png", root / "allowed" / "escape.png")
    (root / "allowed" / "big.png").write_bytes(_png(_picture(400, 400, 9)))  # > MAX_IMAGE_BYTES
    return root


@pytest.fixture(scope="module")
def tokenizer(folder):
    config = types.SimpleNamespace(image_token_id=IMAGE_TOKEN_ID, eos_token_id=2)
    return VisionLanguageTokenizer.from_source(ModelSource(MODEL, folder, WeightsFormat.safetensors), config)


def _state(tokenizer, engine, media_options) -> ServerState:
    return ServerState(
        tokenizer=tokenizer, engine=engine, served_model_name=MODEL, max_seq_len=MAX_SEQ_LEN,
        vocab_size=VOCAB_SIZE, media=media_options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def engine():
    return FakeEngine()


@pytest.fixture(scope="module")
def server(tokenizer, engine, media):
    options = MediaOptions(
        max_images=MAX_IMAGES, allowed_local_media_path=media / "allowed", fetch_timeout_s=1.0,
        max_image_bytes=MAX_IMAGE_BYTES,
    )  # fmt: skip
    with AppServer(create_app(_state(tokenizer, engine, options))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _last_received(engine):
    request_id = next(reversed(engine.received))
    return engine.received.pop(request_id)


def _expect_engine_got(engine, tokenizer, messages, pictures):
    """The engine received what the tokenizer makes of `messages` (internal form) and the
    decoded `pictures`: the same ids, and images with the same pixels, grids and offsets."""
    ids, images = _last_received(engine)
    want_ids, want_images = tokenizer.encode_chat_with_images(messages, pictures)
    assert ids == want_ids
    assert [(i.offset, i.num_tokens, i.grid_thw) for i in images] == [
        (i.offset, i.num_tokens, i.grid_thw) for i in want_images
    ]
    for got, want in zip(images, want_images, strict=True):
        np.testing.assert_array_equal(got.pixel_values, want.pixel_values)
        assert got.content_hash == want.content_hash
    return ids, images


def test_data_url_image_reaches_the_engine(client, engine, tokenizer):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": _data_url(RED), "detail": "high"}},
        ]}],
        max_tokens=3,
    )  # fmt: skip
    ids, (image,) = _expect_engine_got(
        engine, tokenizer,
        [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]}],
        [RED],
    )  # fmt: skip
    # The image's tokens are prompt tokens: they count in usage (and the context length).
    assert reply.usage.prompt_tokens == len(ids) and image.num_tokens > 1
    assert ids[image.offset : image.end] == [IMAGE_TOKEN_ID] * image.num_tokens


def test_http_and_local_file_images_and_the_string_form(client, engine, tokenizer, image_host, media):
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Compare."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": f"{image_host}/wide.png"},
                {"type": "text", "text": "versus"},
                {"type": "image_url", "image_url": {"url": (media / "allowed" / "square.png").as_uri()}},
                {"type": "image_url", "image_url": {"url": "square.png"}},
            ]},
        ],
        max_tokens=2,
    )  # fmt: skip
    _, images = _expect_engine_got(
        engine, tokenizer,
        [{"role": "system", "content": "Compare."},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "versus"}, {"type": "image"}, {"type": "image"}]}],
        [WIDE, SQUARE, SQUARE],
    )  # fmt: skip
    assert images[0].grid_thw != images[1].grid_thw and images[1].content_hash == images[2].content_hash


def test_lm_eval_local_chat_completions_shape(server, engine, tokenizer):
    from lm_eval.models.api_models import create_image_prompt
    from lm_eval.models.openai_completions import LocalChatCompletion

    messages = create_image_prompt([SQUARE, RED], [{"role": "user", "content": "<image> What is the value?"}])
    payload = LocalChatCompletion._create_payload(
        types.SimpleNamespace(model=MODEL, _max_gen_toks=4), messages, generate=True, gen_kwargs={"until": ["\n\n"]}
    )
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=60)
    assert reply.status_code == 200, reply.text
    _expect_engine_got(
        engine, tokenizer,
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "<image> What is the value?"}]}],
        [SQUARE, RED],
    )  # fmt: skip


def test_streaming_with_an_image(client, engine, tokenizer):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(SQUARE)}}]}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    ids, _ = _expect_engine_got(engine, tokenizer, [{"role": "user", "content": [{"type": "image"}]}], [SQUARE])
    assert usage[0].prompt_tokens == len(ids)


def test_text_only_chats_render_as_before(client, engine, folder):
    plain = TextTokenizer.from_source(ModelSource(MODEL, folder, WeightsFormat.safetensors))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    ids, images = _last_received(engine)
    assert ids == plain.encode_chat(messages) and images == ()
    parts = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}]  # fmt: skip
    client.chat.completions.create(model=MODEL, messages=parts, max_tokens=2)
    assert _last_received(engine) == (ids, ())


def test_tokenize_counts_the_image_tokens(server, engine, tokenizer):
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(WIDE)}}]}]}
    reply = server.post("/tokenize", body)
    assert reply.status_code == 200, reply.text
    ids, _ = tokenizer.encode_chat_with_images([{"role": "user", "content": [{"type": "image"}]}], [WIDE])
    assert reply.json()["tokens"] == ids and reply.json()["count"] == len(ids)


def _image_message(*urls, role="user", text="Describe."):
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": role, "content": [{"type": "text", "text": text}, *parts]}]


def _refused(server, messages, status, code, param, needle="", **extra):
    body = {"model": MODEL, "messages": messages, "max_tokens": 2, **extra}
    reply = server.post("/v1/chat/completions", body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["code"], error["param"]) == (code, param), error
    assert needle in error["message"], error
    return error


def test_bad_images_get_a_400_naming_the_part(server, client, engine, tokenizer, image_host, media):
    before = len(engine.received)
    at = "messages[0].content[1].image_url"
    _refused(server, _image_message("data:image/png;base64," + base64.b64encode(b"not a png").decode()),
             400, "invalid_image", at, "not an image")  # fmt: skip
    _refused(server, _image_message("data:image/png;base64,%%%"), 400, "invalid_image", at, "base64")
    truncated = "data:image/png;base64," + base64.b64encode(_png(RED)[:300]).decode()
    _refused(server, _image_message(truncated), 400, "invalid_image", at, "truncated")
    _refused(server, _image_message("ftp://example.com/a.png"), 400, "invalid_image_url", at, "scheme")
    _refused(server, _image_message("javascript:alert(1)"), 400, "invalid_image_url", at, "scheme")
    _refused(server, _image_message((media / "secret.png").as_uri()), 400, "invalid_image_url", at, "outside")
    _refused(server, _image_message(str(media / "allowed" / "escape.png")), 400, "invalid_image_url", at, "outside")
    _refused(server, _image_message(f"{image_host}/missing.png"), 400, "image_fetch_failed", at, "404")
    _refused(server, _image_message(f"{image_host}/slow.png"), 400, "image_fetch_failed", at, "longer than 1 s")
    _refused(server, _image_message((media / "allowed" / "big.png").as_uri()), 400, "image_too_large", at)
    # The second image is the bad one: its index is named.
    _refused(server, _image_message(_data_url(RED), "gopher://x"), 400, "invalid_image_url", "messages[0].content[2].image_url")
    too_many = _image_message(*[_data_url(SQUARE)] * (MAX_IMAGES + 1))
    _refused(server, too_many, 400, "too_many_images", f"messages[0].content[{MAX_IMAGES + 1}]", "at most 3")
    # Shapes: images only in user messages, a known detail, a URL.
    _refused(server, _image_message(_data_url(RED), role="system"), 400, "invalid_parameter", "messages[0].content[1]", "user")
    bad_detail = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(RED), "detail": "ultra"}}]}]
    _refused(server, bad_detail, 400, "invalid_parameter", "messages[0].content[0].image_url.detail")
    no_url = [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]
    _refused(server, no_url, 400, "invalid_parameter", "messages[0].content[0].image_url.url")
    empty = [{"role": "user", "content": [{"type": "image_url", "image_url": ""}]}]
    _refused(server, empty, 400, "invalid_parameter", "messages[0].content[0].image_url")
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
    _refused(server, audio, 400, "invalid_parameter", "messages[0].content")
    # Typed image tokens have no image to fill them.
    _refused(server, [{"role": "user", "content": "see <|image_pad|>"}], 400, None, "messages", "may not contain")
    completion = server.post("/v1/completions", {"model": MODEL, "prompt": [1, IMAGE_TOKEN_ID, 2], "max_tokens": 2})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "prompt", completion.text
    # An image's tokens count against the context length.
    ids, _ = tokenizer.encode_chat_with_images(
        [{"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image"}]}], [RED]
    )
    error = _refused(server, _image_message(_data_url(RED)), 400, "context_length_exceeded", "max_tokens",
                     max_tokens=MAX_SEQ_LEN - len(ids) + 1)  # fmt: skip
    assert f"({len(ids)} tokens)" in error["message"]
    assert len(engine.received) == before  # nothing reached the engine
    # ...and the server goes on serving.
    ok = client.chat.completions.create(model=MODEL, messages=_image_message(_data_url(RED)), max_tokens=MAX_SEQ_LEN - len(ids))
    assert ok.usage.prompt_tokens == len(ids)
    assert server.get("/health").json() == {"status": "ok"}


def test_an_image_load_that_hangs_is_cut_off(server, monkeypatch):
    """A fetch's own timeouts do not cover a DNS lookup that hangs: the request still ends."""
    import max.serve.chat_images as chat_images

    real = chat_images.load_image

    def hanging(url, **kwargs):
        if url.endswith("/hang.png"):
            time.sleep(4)
        return real(url, **kwargs)

    monkeypatch.setattr(chat_images, "load_image", hanging)
    monkeypatch.setattr(chat_images, "LOAD_GRACE_S", 0.5)
    start = time.monotonic()
    _refused(server, _image_message(_data_url(RED), "http://unresolvable.invalid/hang.png"), 400,
             "image_fetch_failed", "messages[0].content[2].image_url", "longer than 1.5 s")  # fmt: skip
    assert time.monotonic() - start < 3.5


def test_local_files_are_refused_unless_a_directory_is_allowed(tokenizer, media):
    engine = FakeEngine()
    with AppServer(create_app(_state(tokenizer, engine, MediaOptions()))) as srv:
        error = _refused(srv, _image_message((media / "allowed" / "square.png").as_uri()), 400, "invalid_image_url",
                         "messages[0].content[1].image_url", "--allowed-local-media-path")  # fmt: skip
        assert "square.png" not in error["message"]
        assert srv.post("/v1/chat/completions", {"model": MODEL, "messages": _image_message(_data_url(RED)), "max_tokens": 1}).status_code == 200


def test_a_text_only_model_refuses_image_parts(folder):
    plain = TextTokenizer.from_source(ModelSource(MODEL, folder, WeightsFormat.safetensors))
    engine = FakeEngine()
    with AppServer(create_app(_state(plain, engine, MediaOptions()))) as srv:
        _refused(srv, _image_message(_data_url(RED)), 400, "images_not_supported", "messages[0].content[1]", "does not take images")
        _refused(srv, _image_message("ftp://x"), 400, "images_not_supported", "messages[0].content[1]")
        body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 1}
        assert srv.post("/v1/chat/completions", body).status_code == 200
        assert engine.received and all(images == () for _, images in engine.received.values())


def test_openapi_document_describes_image_parts(server):
    from openapi_spec_validator import validate

    document = server.get("/openapi.json").json()
    validate(document)
    assert "ImageUrl" in document["components"]["schemas"]


def test_mangled_images_are_never_a_server_error(server, engine):
    """Seeded: PNG, JPEG, GIF and WebP files bit-flipped, truncated, or with their header
    kept and the rest random; each answer is a 200 or a 400, never a 5xx."""
    import random

    rng = random.Random(20261129)
    sources = []
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        buf = io.BytesIO()
        _picture(48, 40, 5).save(buf, format=fmt)
        sources.append(buf.getvalue())
    statuses = set()
    for case in range(60):
        data = bytearray(rng.choice(sources))
        kind = case % 3
        if kind == 0:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[: rng.randrange(1, len(data))]
        else:
            data = data[:16] + bytearray(rng.randbytes(rng.randint(0, 2000)))
        url = "data:image/png;base64," + base64.b64encode(bytes(data)).decode()
        reply = server.post("/v1/chat/completions", {"model": MODEL, "messages": _image_message(url), "max_tokens": 1})
        assert reply.status_code in (200, 400), reply.text
        if reply.status_code == 400:
            assert reply.json()["error"]["param"] == "messages[0].content[1].image_url", reply.text
        statuses.add(reply.status_code)
    assert 400 in statuses
    assert server.get("/health").json() == {"status": "ok"}
