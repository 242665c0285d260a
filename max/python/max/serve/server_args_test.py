"""The flags of `serve`'s limits, security and supervision: defaults, parsing, refusals."""

import pytest

from max.entrypoints.pipelines import build_parser
from max.errors import MaxError
from max.serve.request_limits import ServerLimits
from max.serve.server_args import restart_policy_from_args, server_limits_from_args


def _serve_args(*flags: str):
    return build_parser().parse_args(["serve", *flags])


def test_defaults_are_safe(monkeypatch):
    monkeypatch.delenv("MAX_SERVE_API_KEY", raising=False)
    args = _serve_args()
    assert args.trust_remote_code is False  # model code runs only when asked for
    assert args.api_key is None and args.allowed_origins == [] and not args.require_api_key_for_metrics
    assert server_limits_from_args(args) == ServerLimits()
    assert ServerLimits().prompt_chars(4096) == 32 * 4096
    policy = restart_policy_from_args(args)
    assert policy.max_restarts == 3 and [policy.backoff(a) for a in (1, 2, 3, 9)] == [1.0, 2.0, 4.0, 30.0]


def test_flags_set_the_limits(monkeypatch):
    monkeypatch.setenv("MAX_SERVE_API_KEY", "from-env")
    args = _serve_args(
        "--max-request-body-bytes", "1MiB", "--max-json-depth", "8", "--max-prompt-chars", "100",
        "--max-queue-size", "5", "--request-timeout", "2.5", "--allowed-origins", "https://a.example", "*",
        "--engine-max-restarts", "0",
    )  # fmt: skip
    assert args.api_key == "from-env" and args.allowed_origins == ["https://a.example", "*"]
    assert server_limits_from_args(args) == ServerLimits(2**20, 8, 100, 5, 2.5)
    assert restart_policy_from_args(args).max_restarts == 0


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--max-queue-size", "0"], "--max-queue-size"),
        (["--max-request-body-bytes", "lots"], "lots"),
        (["--max-json-depth", "0"], "--max-json-depth"),
        (["--request-timeout", "-1"], "--request-timeout"),
        (["--engine-max-restarts", "-1"], "--engine-max-restarts"),
    ],
)
def test_bad_values_name_their_flag(flags, needle):
    args = _serve_args(*flags)
    with pytest.raises(MaxError, match=needle):
        server_limits_from_args(args)
        restart_policy_from_args(args)


def test_image_flags(tmp_path):
    from max.serve.chat_images import MediaOptions
    from max.serve.server_args import media_options_from_args

    assert media_options_from_args(_serve_args()) == MediaOptions()  # 8 images, no local files, 5 s, 20 MiB
    assert MediaOptions().max_images == 8 and MediaOptions().allowed_local_media_path is None
    args = _serve_args(
        "--allowed-local-media-path", str(tmp_path), "--limit-mm-per-prompt", '{"image": 2, "video": 0}',
        "--media-fetch-timeout", "1.5", "--max-image-bytes", "1MiB",
    )  # fmt: skip
    assert media_options_from_args(args) == MediaOptions(2, tmp_path.resolve(), 1.5, 2**20)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--allowed-local-media-path", "/no/such/dir"], "--allowed-local-media-path"),
        (["--limit-mm-per-prompt", "4"], "--limit-mm-per-prompt"),
        (["--limit-mm-per-prompt", "{image: 4}"], "--limit-mm-per-prompt"),
        (["--limit-mm-per-prompt", '{"image": -1}'], "--limit-mm-per-prompt"),
        (["--limit-mm-per-prompt", '{"image": "4"}'], "--limit-mm-per-prompt"),
        (["--limit-mm-per-prompt", '{"video": 1}'], "only images"),
        (["--media-fetch-timeout", "0"], "--media-fetch-timeout"),
        (["--media-fetch-timeout", "nan"], "--media-fetch-timeout"),
        (["--max-image-bytes", "0"], "--max-image-bytes"),
        (["--max-image-bytes", "huge"], "huge"),
    ],
)
def test_bad_image_flags_name_their_flag(flags, needle):
    from max.serve.server_args import media_options_from_args

    with pytest.raises(MaxError, match=needle):
        media_options_from_args(_serve_args(*flags))
