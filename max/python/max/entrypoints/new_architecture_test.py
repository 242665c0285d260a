"""The bring-up workflow outside the registered tree: scaffold MyLlamaForCausalLM from
llama3, serve a checkpoint of it with --custom-architectures, and verify its logits against
the reference; without the flag the checkpoint is refused by name."""

from pathlib import Path

import openai

from max.testing.cli import run_cli, run_script
from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

TOOLS = Path(__file__).parents[3] / "tests" / "integration"



def test_scaffold_serve_and_verify(tmp_path):
    arch_dir = tmp_path / "archs" / "my_llama"
    result = run_cli("new-architecture", "--from", "llama3", "--name", "MyLlamaForCausalLM", "--output", str(arch_dir))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in arch_dir.iterdir()} >= {"__init__.py", "arch.py", "model.py", "model_config.py", "weight_adapters.py", "BUILD.bazel"}
    assert 'name="MyLlamaForCausalLM"' in (arch_dir / "arch.py").read_text()
    assert "class MyLlamaModel(PipelineModel)" in (arch_dir / "model.py").read_text()

    checkpoint = write_tiny_checkpoint(
        tmp_path / "ckpt", llama_config(architectures=["MyLlamaForCausalLM"]), seed=9, with_tokenizer=True
    )

    refused = run_cli("generate", "--model-path", str(checkpoint), "--prompt", "hi")
    assert refused.returncode == 1
    assert "architecture 'MyLlamaForCausalLM' is not supported" in refused.stderr
    assert "--custom-architectures" in refused.stderr

    with ServerProcess("--model-path", str(checkpoint), "--custom-architectures", str(arch_dir),
                       "--served-model-name", "my-llama", "--max-length", "256") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="my-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0

    torch_file, max_file = tmp_path / "torch.json", tmp_path / "max.json"
    common = ["--pipeline", str(checkpoint), "--num-steps", "5", "--custom-architectures", str(arch_dir)]
    generate = TOOLS / "tools" / "generate_llm_logits.py"
    r = run_script(generate, "--framework", "torch", *common, "--output", str(torch_file))
    assert r.returncode == 0, r.stderr
    r = run_script(generate, "--framework", "max", *common, "--output", str(max_file), "--reference", str(torch_file))
    assert r.returncode == 0, r.stderr
    r = run_script(
        TOOLS / "accuracy" / "verify.py", "--eval-metric", "cos,kl,tol", "--cos-dist-threshold", "1e-6",
        "--kl-div-threshold", "1e-6", "--relative-tolerance", "1e-4", "--absolute-tolerance", "1e-5",
        str(max_file), str(torch_file),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_scaffold_refuses_bad_input(tmp_path):
    r = run_cli("new-architecture", "--from", "nope", "--name", "XForCausalLM", "--output", str(tmp_path / "x"))
    assert r.returncode == 1 and "no architecture folder 'nope'" in r.stderr
    r = run_cli("new-architecture", "--from", "llama3", "--name", "bad name", "--output", str(tmp_path / "y"))
    assert r.returncode == 1 and "must be a class name" in r.stderr
    r = run_cli("new-architecture", "--from", "llama3", "--name", "XForCausalLM", "--output", str(tmp_path / "bad-dir"))
    assert r.returncode == 1 and "Python identifier" in r.stderr
