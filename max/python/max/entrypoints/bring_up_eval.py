"""Step 3 of `bring-up`: lm-eval through `serve` (`local-chat-completions`, 64 concurrent
requests, greedy, seeded) and the same tasks through lm-eval's `hf` model (transformers) as
the reference; then a per-sample comparison and the ratio of the scores.

Offline (no --tasks) the tasks are the local ones the project ships: `text_qa_local`, and
`chartqa_local` for a vision-language model (its reference is lm-eval's `hf-multimodal`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from max.entrypoints.bring_up_step import (
    ACCURACY,
    FAILED,
    PASSED,
    TITLES,
    BringUpOptions,
    ModelFacts,
    P,
    Progress,
    StepResult,
    command,
)
from max.errors import MaxError

SERVED_NAME = "bring-up"
# The tqdm counters ("12/32 [") in lm-eval's log (loading, then requests), for the progress line.
_COUNT = re.compile(r"(\d+/\d+) \[")
_CHARTQA_SCRIPT = Path(__file__).resolve().parents[3] / "tests" / "integration" / "accuracy" / "chartqa_local.py"


def write_local_tasks(directory: Path, takes_images: bool, limit: int | None) -> tuple[list[str], list[Path], list[str]]:
    """Writes the shipped local tasks; (task names, include paths, commands that write them)."""
    from max.verification import text_qa_local

    text_dir = text_qa_local.write_task(directory / "text_qa_local")
    tasks, paths = [text_qa_local.TASK], [text_dir]
    cmds = [command("python -m max.verification.text_qa_local", "--output", str(text_dir))]
    if takes_images:
        charts = str(max(limit or 36, 1))
        chart_dir = directory / "chartqa_local"
        args = ["--output", str(chart_dir), "--num-charts", charts]
        subprocess.run([sys.executable, str(_CHARTQA_SCRIPT), *args], check=True, env=_env(directory))
        tasks.append("chartqa_local")
        paths.append(chart_dir)
        cmds.append(command(f"{ACCURACY}:chartqa_local --", *args))
    return tasks, paths, cmds


def _env(work: Path) -> dict[str, str]:
    # lm-eval's datasets cache the JSON they read; the home directory may be read-only.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HOME": str(work / "hf-home")}


def _lm_eval_args(tasks: list[str], include: list[Path], limit: int | None, out: Path) -> list[str]:
    args = ["--tasks", ",".join(tasks)]
    for path in include:
        args += ["--include_path", str(path)]
    args += ["--apply_chat_template", "--seed", "1234", "--gen_kwargs", "temperature=0", "--log_samples",
             "--output_path", str(out)]  # fmt: skip
    if limit is not None:
        args += ["--limit", str(limit)]
    return args


def _run_lm_eval(args: list[str], work: Path, log: Path, offline: bool, progress: Progress, label: str) -> None:
    """Runs lm_eval into `log`, showing its request count on the progress line."""
    env = _env(work)
    if offline:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    shown = ""
    with log.open("w") as f:
        process = subprocess.Popen([sys.executable, "-m", "lm_eval", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(2)
            counts = _COUNT.findall(log.read_text(errors="replace")[-4000:])
            if counts and counts[-1] != shown:
                shown = counts[-1]
                progress.note(f"{label}: {shown}")
    if process.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise MaxError(f"lm_eval exited with {process.returncode} (log: {log}):\n{tail}")


def _reference_model_args(opts: BringUpOptions, facts: ModelFacts, encoding: str) -> str:
    parts = [f"pretrained={facts.directory}", f"dtype={encoding}"]
    if facts.gguf_file:
        parts.append(f"gguf_file={facts.gguf_file}")
    if opts.trust_remote_code:
        parts.append("trust_remote_code=True")
    return ",".join(parts)


def _reference_device(opts: BringUpOptions) -> str:
    """lm-eval's --device for the reference: the GPU bring-up runs on, or the CPU."""
    if not opts.devices.startswith("gpu"):
        return "cpu"
    return "cuda:" + opts.devices.split(":", 1)[1].split(",")[0] if ":" in opts.devices else "cuda"


def eval_encoding(facts: ModelFacts) -> str:
    """The encoding both sides run: the first float one asked for (transformers has no
    counterpart of a quantized encoding but its float decoding)."""
    from max.pipelines.lib import FLOAT_ENCODINGS

    floats = [e for e in facts.encodings if e in FLOAT_ENCODINGS]
    if not floats:
        raise MaxError("eval needs a float encoding (float32, bfloat16 or float16) in --encodings")
    return floats[0]


def run_eval(opts: BringUpOptions, facts: ModelFacts) -> StepResult:
    """Runs step 3."""
    from max.testing.server_process import ServerProcess
    from max.verification.lm_eval_comparison import compare_runs, format_table, printed_table

    result = StepResult("eval", TITLES["eval"])
    start = time.perf_counter()
    work = (opts.output / "eval").resolve()
    work.mkdir(parents=True, exist_ok=True)
    progress = Progress("eval", 4)
    encoding = eval_encoding(facts)
    progress.advance("writing tasks")
    # The local tasks are always on the include path, so --tasks may name them beside
    # lm-eval's own; only lm-eval's own need the network.
    local, include, result.commands = write_local_tasks(work / "tasks", facts.takes_images, opts.limit)
    tasks = list(opts.tasks) if opts.tasks else local
    offline = all(t in local for t in tasks)
    serve_args = ["--model-path", facts.model_path, "--served-model-name", SERVED_NAME, "--devices", opts.devices,
                  "--quantization-encoding", encoding, *opts.custom_flags()]  # fmt: skip
    if facts.max_length is not None:
        serve_args += ["--max-length", str(facts.max_length)]
    progress.advance(f"serve + lm-eval local-chat-completions ({', '.join(tasks)})")
    label = "lm-eval local-chat-completions"
    with ServerProcess(*serve_args, startup_timeout=600) as server:
        ours_args = ["--model", "local-chat-completions", "--model_args",
                     f"model={SERVED_NAME},base_url={server.url}/v1/chat/completions,num_concurrent=64,max_retries=1",
                     *_lm_eval_args(tasks, include, opts.limit, work / "ours")]  # fmt: skip
        result.commands.append(command(f"{P} serve", *serve_args, "--port", str(server.port)))
        result.commands.append(command("lm_eval", *ours_args))
        _run_lm_eval(ours_args, work, work / "lm_eval-ours.log", offline, progress, label)
    reference_model = "hf-multimodal" if "chartqa_local" in tasks else "hf"
    progress.advance(f"lm-eval {reference_model} (transformers, {encoding})")
    ref_args = ["--model", reference_model, "--model_args", _reference_model_args(opts, facts, encoding),
                "--batch_size", "16", "--device", _reference_device(opts), *_lm_eval_args(tasks, include, opts.limit, work / "reference")]  # fmt: skip
    result.commands.append(command("lm_eval", *ref_args))
    _run_lm_eval(ref_args, work, work / "lm_eval-reference.log", offline, progress, f"lm-eval {reference_model}")
    progress.advance("per-sample comparison")
    comparisons = compare_runs(work / "ours", work / "reference", tasks)
    progress.finish()
    result.markdown = (
        f"Both sides in {encoding}, greedy, seed 1234, chat template applied"
        f"{f', at most {opts.limit} documents per task' if opts.limit else ''}; a task passes when ours scores at "
        f"least 95 % of the reference.\n\n{format_table(comparisons)}\n\n"
        f"As lm-eval printed them, ours (`local-chat-completions`):\n\n{printed_table(work / 'lm_eval-ours.log')}\n\n"
        f"and the reference (`{reference_model}`):\n\n{printed_table(work / 'lm_eval-reference.log')}"
    )
    result.details = {"encoding": encoding, "offline": offline, "tasks": [c.as_dict() for c in comparisons]}
    result.status = PASSED if all(c.passed for c in comparisons) else FAILED
    result.summary = "; ".join(
        f"{c.task} {c.ours:.3f} vs {c.reference:.3f} ({'inf' if c.ratio == float('inf') else f'{c.ratio:.0%}'}), "
        f"{c.identical}/{c.samples} identical"
        for c in comparisons
    )
    result.seconds = time.perf_counter() - start
    return result
