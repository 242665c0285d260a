"""Command-line flags shared by the tools: which model, which device, engine limits,
and how to sample. Each group maps onto a config object; the model and engine flags are
generated from `PipelineConfig`'s own fields (`max.pipelines.lib.config_flags`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping

from max.errors import MaxError
from max.pipelines.lib import PipelineConfig, SamplingParams
from max.pipelines.lib.config import TorchrunWorld
from max.pipelines.lib.config_flags import add_flags, from_args


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and load the model and size the engine (every `PipelineConfig`
    field that names a flag)."""
    add_flags(parser, PipelineConfig)


def environment_settings(env: Mapping[str, str]) -> dict:
    """The settings the environment gives a process, read here, at the entry point, and
    nowhere below: the torchrun group (RANK, WORLD_SIZE, ...), and the defaults of
    --cpu-threads (MAX_CPU_THREADS, else OMP_NUM_THREADS), --gemv (MAX_GEMV=0 turns it off)
    and --pdl (MAX_PDL=0) where the flags were not given."""
    settings: dict = {"torchrun": TorchrunWorld.from_environment(env)}
    threads = env.get("MAX_CPU_THREADS") or env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        settings["cpu_threads"] = int(threads)
    for name in ("gemv", "pdl"):
        if env.get(f"MAX_{name.upper()}") == "0":
            settings[name] = False
    return settings


def pipeline_config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """The PipelineConfig the flags (and the environment, see `environment_settings`)
    describe, validated."""
    from_env = environment_settings(os.environ if env is None else env)
    given = {k: v for k, v in from_env.items() if k == "torchrun" or _is_default(args, k)}
    config = from_args(PipelineConfig, args, seed=getattr(args, "seed", None) or 0, torchrun=given.pop("torchrun"))
    if given:
        config = dataclasses.replace(config, **given)
    config.validate()
    return config


def _is_default(args: argparse.Namespace, name: str) -> bool:
    """Whether flag `name` kept its default (the environment may then set it)."""
    default = {"cpu_threads": None, "gemv": True, "pdl": True}[name]
    return getattr(args, name, default) == default


def add_sampling_args(parser: argparse.ArgumentParser, default_temperature: float) -> None:
    """Flags of per-request sampling."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=default_temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * p_max")
    g.add_argument("--seed", type=int, help="sampling seed (reproducible output)")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stop-token-ids", type=int, nargs="*", default=[], help="token ids that end generation")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The SamplingParams the flags describe (validated)."""
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        stop=list(args.stop),
        stop_token_ids=list(args.stop_token_ids),
        ignore_eos=args.ignore_eos,
    )
    params.validate()
    if params.max_new_tokens is not None and params.max_new_tokens < 1:
        raise MaxError("--max-new-tokens must be at least 1")
    return params
