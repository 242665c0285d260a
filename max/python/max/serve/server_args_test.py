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
