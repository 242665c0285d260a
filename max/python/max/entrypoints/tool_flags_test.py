"""The flags every tool spells alike: --result-file (with the deprecated --json) and
--api-key with its environment defaults."""

import argparse

import pytest

from max.entrypoints.tool_flags import (
    OPENAI_API_KEY_ENV,
    SERVER_API_KEY_ENV,
    add_api_key_arg,
    add_result_file_arg,
)


def _parse(argv, *, json_alias=False):
    parser = argparse.ArgumentParser()
    add_result_file_arg(parser, json_alias=json_alias)
    return parser.parse_args(argv)


def test_result_file_and_its_deprecated_json_alias(capsys):
    assert _parse([]).result_file is None
    assert _parse(["--result-file", "out.json"]).result_file == "out.json"
    assert _parse(["--json", "old.json"], json_alias=True).result_file == "old.json"
    assert "--json is deprecated; use --result-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--json", "old.json"])  # only where the tool had it


def test_the_alias_is_not_advertised():
    parser = argparse.ArgumentParser()
    add_result_file_arg(parser, json_alias=True)
    assert "--json" not in parser.format_help()


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, None),
        ({OPENAI_API_KEY_ENV: "openai"}, "openai"),
        ({SERVER_API_KEY_ENV: "server"}, "server"),
        ({SERVER_API_KEY_ENV: "server", OPENAI_API_KEY_ENV: "openai"}, "server"),
    ],
)
def test_api_key_from_the_server_s_variable_then_openai_s(monkeypatch, env, expected):
    for name in (SERVER_API_KEY_ENV, OPENAI_API_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_api_key_arg(parser)
    assert parser.parse_args([]).api_key == expected
    assert parser.parse_args(["--api-key", "flag"]).api_key == "flag"


def test_the_server_reads_the_same_variable():
    from max.serve.server_args import API_KEY_ENV

    assert API_KEY_ENV == SERVER_API_KEY_ENV
