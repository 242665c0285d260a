"""A tiny gpt-oss model that speaks the harmony format, for tests of the channel split.

A random model never writes a well-formed harmony message, so this one is scripted: a
small word-level tokenizer with harmony's special tokens and a harmony-style chat template,
and gpt-oss weights whose greedy continuation of token t is always `SCRIPT[t]` (every
attention and expert output is zero, the embedding is one-hot, and the LM head maps each
token to its successor). From the template's prompt the model answers

    (prompt ...<|channel|>analysis<|message|>Let) me think <|end|>
    <|start|>assistant <|channel|>final <|message|>Four <|return|>

and with `reasoning_effort: "low"` the template opens the final channel at once (the
prompt ends `<|channel|>final<|message|>`), so the answer has no reasoning.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]
WORDS = ["[UNK]", "system", "user", "assistant", "analysis", "final", "commentary", "Let", "me", "think", "Four"]
VOCAB = WORDS + SPECIAL_TOKENS

# Token -> the token the model writes after it (greedy); any other token is followed by <|return|>.
SCRIPT = {
    "Let": "me",
    "me": "think",
    "think": "<|end|>",
    "<|end|>": "<|start|>",
    "<|start|>": "assistant",
    "assistant": "<|channel|>",
    "<|channel|>": "final",
    "final": "<|message|>",
    "<|message|>": "Four",
}

CHAT_TEMPLATE = (
    "<|start|>system<|message|>Reasoning: {{ reasoning_effort | default('medium') }}<|end|>"
    "{%- for m in messages -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant"
    "{%- if reasoning_effort == 'low' -%}<|channel|>final<|message|>"
    "{%- else -%}<|channel|>analysis<|message|>Let{%- endif -%}{%- endif -%}"
)


def write_harmony_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer with harmony's special tokens and the chat template above."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|return|>", chat_template=CHAT_TEMPLATE
    )
    hf.save_pretrained(str(directory))
    return Path(directory)


def write_harmony_model(directory: Path) -> Path:
    """The scripted tiny gpt-oss checkpoint, with its tokenizer, in `directory`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    ids = {token: i for i, token in enumerate(VOCAB)}
    vocab, hidden = len(VOCAB), 32
    config = AutoConfig.for_model(
        "gpt_oss", vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=4, max_position_embeddings=256, eos_token_id=ids["<|return|>"], bos_token_id=None,
        pad_token_id=None, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 64},
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "o_proj.bias", "experts.down_proj", "experts.down_proj_bias")):
                param.zero_()  # attention and experts add nothing to the residual stream
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        for token in VOCAB:
            head[ids[SCRIPT.get(token, "<|return|>")], ids[token]] = 1.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(str(directory))
    (directory / "generation_config.json").unlink(missing_ok=True)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["architectures"] = ["GptOssForCausalLM"]
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return write_harmony_tokenizer(directory)
