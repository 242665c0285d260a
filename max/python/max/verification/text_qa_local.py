"""A local text lm-eval task: short factual questions whose answer is one word or number,
scored by whether the answer appears in the reply (case-insensitive, whole word).

    python -m max.verification.text_qa_local --output DIR
    lm_eval --include_path DIR --tasks text_qa_local ...

The text counterpart of `chartqa_local` (max/tests/integration/accuracy): no dataset is
downloaded; lm-eval reads the JSONL through `datasets`' json loader. The questions are
easy enough that a 135M instruction-tuned model answers some of them, so a port that
breaks generation scores visibly lower than the transformers reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from max.errors import MaxError
from max.verification.cli import UsageErrorParser, run_tool

TASK = "text_qa_local"

QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color is fresh grass?", "green"),
    ("What color is snow?", "white"),
    ("What color is a ripe banana?", "yellow"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What is the opposite of day?", "night"),
    ("What is the opposite of big?", "small"),
    ("How many legs does a spider have?", "eight"),
    ("How many days are in a week?", "seven"),
    ("How many months are in a year?", "twelve"),
    ("How many sides does a triangle have?", "three"),
    ("What is 2 + 2?", "4"),
    ("What is 3 + 5?", "8"),
    ("What is 10 - 3?", "7"),
    ("What is 6 times 2?", "12"),
    ("Which planet do we live on?", "Earth"),
    ("Which animal says moo?", "cow"),
    ("Which animal barks?", "dog"),
    ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"),
    ("What star is at the center of our solar system?", "Sun"),
    ("Which ocean is the largest?", "Pacific"),
    ("What language is spoken in Brazil?", "Portuguese"),
]

_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Answer in a few words. {{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function text_qa_utils.process_results
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: contains_answer
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_UTILS = '''"""The answer appears in the reply as a whole word, any case."""

import re


def process_results(doc, results):
    reply = results[0]
    found = re.search(r"\\b" + re.escape(doc["answer"].lower()) + r"\\b", reply.lower())
    return {"contains_answer": 1.0 if found else 0.0}
'''


def write_task(directory: Path, max_gen_toks: int = 32) -> Path:
    """Writes the task folder (YAML, JSONL, text_qa_utils.py) for `--include_path`; returns it."""
    if max_gen_toks < 1:
        raise MaxError("max_gen_toks must be at least 1")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    (directory / "text_qa_utils.py").write_text(_UTILS)
    (directory / f"{TASK}.yaml").write_text(_YAML.format(task=TASK, data=data, max_gen_toks=max_gen_toks))
    return directory


def main(argv: list[str] | None = None) -> int:
    """Writes the task folder named by --output."""
    parser = UsageErrorParser(prog="text_qa_local", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the task folder to write (lm_eval --include_path)")
    parser.add_argument("--max-gen-toks", type=int, default=32)
    args = parser.parse_args(argv)
    path = write_task(Path(args.output), args.max_gen_toks)
    print(f"wrote the {TASK} task ({len(QUESTIONS)} questions) to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
