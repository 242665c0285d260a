"""A local ChartQA-shaped lm-eval task: bar and line charts drawn with known values, and
questions about them with their answers, scored as ChartQA is (relaxed accuracy).

    chartqa_local --output DIR [--num-charts 36]
    lm_eval --model local-chat-completions --include_path DIR --tasks chartqa_local \\
        --model_args model=NAME,base_url=http://127.0.0.1:8000/v1/chat/completions,num_concurrent=64 \\
        --apply_chat_template --gen_kwargs temperature=0

The folder gets the chart images (PNG), `chartqa_local.jsonl` (one question per line:
`query`, `label` as a one-answer list, the image's file), `utils.py` and
`chartqa_local.yaml`, whose prompt, generation settings and metrics (exact match,
relaxed accuracy, anywhere accuracy) are those of lm-eval's own `chartqa` task, so a
model that passes the real task's format passes this one. No dataset is downloaded:
lm-eval reads the JSONL through `datasets`' json loader and the images from disk.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from max.errors import MaxError
from max.verification.cli import UsageErrorParser, run_tool

TASK = "chartqa_local"
CATEGORIES = ["Apples", "Pears", "Plums", "Grapes", "Kiwis", "Mangos", "Limes", "Figs"]
YEARS = [str(y) for y in range(2015, 2024)]
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"]

_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_image: !function utils.doc_to_image
doc_to_text: |
  <image>{{{{query}}}}
  Analyze the image and question carefully, using step-by-step reasoning.
  First, describe any image provided in detail. Then, present your reasoning. And finally your final answer in this format:
  Final Answer: <answer>
  where <answer> follows the following instructions:
  - <answer> should should be a single phrase or number.
  - <answer> should not paraphrase or reformat the text in the image.
  - If <answer> is a ratio, it should be a decimal value like 0.25 instead of 1:4.
  - If the question is a Yes/No question, <answer> should be Yes/No.
  - If <answer> is a number, it should not contain any units.
  - If <answer> is a percentage, it should include a % sign.
  - If <answer> is an entity, it should include the full label from the graph.
  IMPORTANT: Remember, to end your answer with Final Answer: <answer>.
doc_to_target: "{{{{ label[0] }}}}"
generation_kwargs:
  until: []
  temperature: 0.0
  do_sample: false
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: !function utils.exact_match
    aggregation: mean
    higher_is_better: true
  - metric: !function utils.relaxed_accuracy
    aggregation: mean
    higher_is_better: true
  - metric: !function utils.anywhere_accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""

_UTILS = '''"""Images from disk, and lm-eval's own ChartQA metrics."""

from pathlib import Path

from PIL import Image

from lm_eval.tasks.chartqa.utils import anywhere_accuracy, exact_match, relaxed_accuracy  # noqa: F401

_HERE = Path(__file__).resolve().parent


def doc_to_image(doc):
    """The chart of a question, as the PIL image lm-eval sends (base64 PNG)."""
    return [Image.open(_HERE / doc["image"]).convert("RGB")]
'''


def _bar_chart(rng: random.Random) -> tuple[dict, list[tuple[str, str]]]:
    names = rng.sample(CATEGORIES, rng.randint(3, 6))
    values = rng.sample(range(5, 96), len(names))
    title = f"Fruit sold per day ({rng.choice(['market A', 'market B', 'the shop'])})"
    top = names[values.index(max(values))]
    a, b = rng.sample(range(len(names)), 2)
    questions = [
        (f"How many {names[a]} were sold per day?", str(values[a])),
        ("Which fruit sold the most?", top),
        (f"What is the difference between {names[a]} and {names[b]}?", str(abs(values[a] - values[b]))),
    ]
    return {"kind": "bar", "title": title, "names": names, "values": values}, questions


def _line_chart(rng: random.Random) -> tuple[dict, list[tuple[str, str]]]:
    start = rng.randint(0, len(YEARS) - 5)
    years = YEARS[start : start + rng.randint(4, len(YEARS) - start)]
    values = [rng.randint(10, 90) for _ in years]
    i = rng.randrange(len(years))
    questions = [
        (f"What was the value in {years[i]}?", str(values[i])),
        ("In which year was the value the highest?", years[values.index(max(values))]),
        (f"What is the sum of the values in {years[0]} and {years[-1]}?", str(values[0] + values[-1])),
    ]
    return {"kind": "line", "title": "Visitors (thousands)", "names": years, "values": values}, questions


def draw_chart(chart: dict, path: Path) -> None:
    """A bar or line chart with its title, axis labels and each value written on it."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top = 448, 336, 40, 300, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), chart["title"], fill="black")
    draw.line([(left, top - 10), (left, bottom), (width - 10, bottom)], fill="black", width=2)
    names, values = chart["names"], chart["values"]
    step = (width - left - 20) / len(names)
    scale = (bottom - top) / 100
    points = []
    for i, (name, value) in enumerate(zip(names, values)):
        x0 = left + 10 + i * step
        y = bottom - value * scale
        if chart["kind"] == "bar":
            draw.rectangle([x0, y, x0 + step * 0.7, bottom], fill=COLOURS[i % len(COLOURS)])
            draw.text((x0 + 4, y - 14), str(value), fill="black")
        else:
            cx = x0 + step * 0.35
            points.append((cx, y))
            draw.ellipse([cx - 4, y - 4, cx + 4, y + 4], fill=COLOURS[0])
            draw.text((cx - 8, y - 18), str(value), fill="black")
        draw.text((x0, bottom + 8), name, fill="black")
    if len(points) > 1:
        draw.line(points, fill=COLOURS[0], width=2)
    image.save(path)


def write_task(directory: Path, num_charts: int = 36, seed: int = 0, max_gen_toks: int = 512) -> Path:
    """Writes the task folder (see the module docstring); returns it."""
    if num_charts < 1:
        raise MaxError("--num-charts must be at least 1")
    directory = Path(directory).resolve()
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(num_charts):
        chart, questions = (_bar_chart if i % 2 == 0 else _line_chart)(rng)
        image = f"images/chart-{i:03d}.png"
        draw_chart(chart, directory / image)
        query, answer = questions[i % len(questions)]
        lines.append(json.dumps({"query": query, "label": [answer], "image": image, "type": chart["kind"]}))
    data = directory / f"{TASK}.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (directory / "utils.py").write_text(_UTILS)
    (directory / f"{TASK}.yaml").write_text(_YAML.format(task=TASK, data=data, max_gen_toks=max_gen_toks))
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = UsageErrorParser(prog="chartqa_local", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the task folder to write (lm_eval --include_path)")
    parser.add_argument("--num-charts", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-gen-toks", type=int, default=512, help="as lm-eval's chartqa (512)")
    args = parser.parse_args(argv)
    path = write_task(Path(args.output), args.num_charts, args.seed, args.max_gen_toks)
    print(f"wrote the {TASK} task ({args.num_charts} charts) to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
