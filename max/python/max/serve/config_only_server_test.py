"""Serving a folder that holds only config.json (`--load-format dummy`), through the real
server and the `openai` client: without any tokenizer (`--skip-tokenizer-init`: token-id
prompts in, `token_ids` out, a clear 400 for everything that needs text), with another
model's tokenizer (`--tokenizer`), and the errors when a flag is missing."""

import openai
import pytest

from max.testing.cli import run_cli
from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_config_only

MODEL = "config-only"
IGNORE_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_config_only(tmp_path_factory.mktemp("cfg") / "tiny", llama_config())


def _serve(model_dir, *flags):
    return ServerProcess(
        "--model-path", str(model_dir), "--load-format", "dummy", "--served-model-name", MODEL,
        "--max-length", "128", "--kv-cache-page-size", "8", *flags,
    )


@pytest.fixture(scope="module")
def bare(model_dir):
    """A server with no tokenizer at all."""
    srv = _serve(model_dir, "--skip-tokenizer-init")
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def borrowed(model_dir):
    """A server using the embedded SmolLM2 model's tokenizer (same vocabulary size)."""
    srv = _serve(model_dir, "--tokenizer", "smollm2-135m")
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    assert srv.stop() == 0


def test_token_id_prompt_returns_ids_and_no_text(bare):
    out = bare.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5, temperature=0, extra_body=IGNORE_EOS)
    choice = out.choices[0]
    assert choice.text == ""
    assert len(choice.token_ids) == 5 == out.usage.completion_tokens
    assert out.usage.prompt_tokens == 3
    assert choice.finish_reason == "length"


def test_list_of_id_lists_gives_a_choice_each(bare):
    out = bare.completions.create(model=MODEL, prompt=[[1, 2, 3], [4, 5]], max_tokens=4, temperature=0, extra_body=IGNORE_EOS)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(len(c.token_ids) == 4 for c in out.choices)
    single = bare.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=4, temperature=0, extra_body=IGNORE_EOS)
    assert out.choices[0].token_ids == single.choices[0].token_ids


def test_stream_carries_each_chunks_ids(bare):
    full = bare.completions.create(model=MODEL, prompt=[7, 8, 9], max_tokens=6, temperature=0, extra_body=IGNORE_EOS)
    stream = bare.completions.create(
        model=MODEL, prompt=[7, 8, 9], max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
    )
    ids, texts, usage, chunks = [], [], None, 0
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            chunks += 1
            ids += choice.token_ids
            texts.append(choice.text)
    assert ids == full.choices[0].token_ids
    # One chunk a token, fewer when the stream fell behind and sent waiting tokens together.
    assert 1 <= chunks <= 6 and set(texts) == {""}
    assert usage.completion_tokens == 6


def test_logprobs_name_tokens_by_id(bare):
    out = bare.completions.create(model=MODEL, prompt=[1, 2], max_tokens=2, temperature=0, logprobs=1, extra_body=IGNORE_EOS)
    logprobs = out.choices[0].logprobs
    assert logprobs.tokens == [f"token_id:{t}" for t in out.choices[0].token_ids]
    assert logprobs.text_offset == [0, 0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]), "chat completions need one"),
        (lambda c: c.completions.create(model=MODEL, prompt="Hello"), "'prompt' must be token ids"),
        (lambda c: c.completions.create(model=MODEL, prompt=["a", "b"]), "'prompt' must be token ids"),
        (lambda c: c.completions.create(model=MODEL, prompt=[1, 2], stop=["x"]), "use 'stop_token_ids'"),
    ],
)
def test_what_needs_a_tokenizer_is_a_clear_400(bare, call, message):
    with pytest.raises(openai.BadRequestError) as info:
        call(bare)
    assert info.value.status_code == 400
    assert "runs without a tokenizer (--skip-tokenizer-init)" in info.value.message
    assert message in info.value.message


def test_out_of_vocabulary_id_is_a_400(bare):
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        bare.completions.create(model=MODEL, prompt=[1, 10**7], max_tokens=2)


def test_borrowed_tokenizer_serves_text_ids_and_chat(borrowed):
    text = borrowed.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0, extra_body=IGNORE_EOS)
    assert text.usage.completion_tokens == 4 and text.choices[0].text
    assert not hasattr(text.choices[0], "token_ids")  # ids only when asked for
    ids = borrowed.completions.create(
        model=MODEL, prompt=[1, 2, 3], max_tokens=4, temperature=0, extra_body={**IGNORE_EOS, "return_token_ids": True}
    )
    assert ids.choices[0].text and len(ids.choices[0].token_ids) == 4
    assert ids.choices[0].prompt_token_ids == [1, 2, 3]
    chat = borrowed.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, extra_body=IGNORE_EOS
    )
    assert chat.usage.completion_tokens == 3


def _error_line(result):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_serve_without_a_tokenizer_flag_names_both_flags(model_dir):
    line = _error_line(run_cli("serve", "--model-path", str(model_dir), "--load-format", "dummy", "--port", "1"))
    assert "holds no tokenizer" in line
    assert "--tokenizer" in line and "--skip-tokenizer-init" in line


def test_config_only_needs_the_dummy_load_format(model_dir):
    line = _error_line(run_cli("serve", "--model-path", str(model_dir), "--skip-tokenizer-init", "--port", "1"))
    assert "holds no weights" in line and "--load-format dummy" in line
