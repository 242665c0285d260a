"""Configs of the tiny random checkpoints, one per architecture.

Each exercises what is special about its architecture (GQA, rope scaling, biases, q/k
norms, sliding windows, experts, soft-capping...) at a size that runs in milliseconds.
Sliding windows are a few tokens wide so that test prompts cross them.
"""

from __future__ import annotations

from typing import Any

from max.testing import tiny_vl_processor as vl
from max.testing.tiny_checkpoints import llama_config
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB

_COMMON = {
    "vocab_size": TOKENIZER_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3": llama_config(
        num_hidden_layers=3,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # q/k/v biases; layers from max_window_layers on attend over a sliding window of 6.
    "qwen2": {
        **_COMMON,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 3,
        "rope_theta": 1000000.0,
        "use_sliding_window": True,
        "sliding_window": 6,
        "max_window_layers": 1,
        "tie_word_embeddings": False,
    },
    # Per-head q/k RMSNorm; head_dim (32) is not hidden / heads (16); tied embeddings; yarn.
    "qwen3": {
        **_COMMON,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "num_hidden_layers": 3,
        "head_dim": 32,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    },
    # 8 routed experts, 2 per token, renormalized; every second layer sparse, one forced dense.
    "qwen3_moe": {
        **_COMMON,
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "num_hidden_layers": 4,
        "head_dim": 16,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
        "tie_word_embeddings": False,
    },
    # Sliding-window local layers (window 5) with their own rope base, global layers with a
    # linear-scaled rope; query_pre_attn_scalar not head_dim; soft-capped logits.
    "gemma3": {
        **_COMMON,
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "num_hidden_layers": 6,
        "head_dim": 32,
        "query_pre_attn_scalar": 24,
        "sliding_window": 5,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
        "rope_theta": 1000000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "rope_local_base_freq": 10000.0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    # Attention sinks; q/k/v/o biases; sliding (window 6) and full layers in turn; YaRN
    # without truncation; 8 experts, 4 per token, softmax over the top logits, biased, with
    # a clamp (0.25) low enough to bind on these small activations.
    "gpt_oss": {
        **_COMMON,
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "num_hidden_layers": 4,
        "intermediate_size": 32,
        "head_dim": 16,
        "num_local_experts": 8,
        "num_experts_per_tok": 4,
        "sliding_window": 6,
        "swiglu_limit": 0.25,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 8.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 64,
        },
        "tie_word_embeddings": False,
    },
    # Every layer over a sliding window of 6 (Mistral v0.1's layout); head_dim 32 is not
    # hidden / heads (as Mistral-Nemo's).
    "mistral": {
        **_COMMON,
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "num_hidden_layers": 3,
        "head_dim": 32,
        "sliding_window": 6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    # Fused qkv_proj and gate_up_proj; LongRoPE (short and long factors, original context
    # 16, so the test prompts run past it) over half of each head (partial_rotary_factor);
    # a sliding window of 8 on every layer.
    "phi3": {
        **_COMMON,
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "num_hidden_layers": 3,
        "partial_rotary_factor": 0.5,
        "max_position_embeddings": 512,
        "original_max_position_embeddings": 16,
        "rope_scaling": {
            "rope_type": "longrope",
            "short_factor": [1.0, 1.1, 1.3, 1.6],
            "long_factor": [1.5, 3.0, 7.0, 15.0],
        },
        "sliding_window": 8,
        "tie_word_embeddings": False,
    },
    # Norms after attention and after the MLP (none before); q and k normalized over the
    # whole projection, not per head.
    "olmo2": {
        **_COMMON,
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "num_hidden_layers": 3,
        # Olmo2Config's default pad id (1) is the prompts' BOS, which generate would mask.
        "pad_token_id": 0,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    # Latent attention (rank 32, rotary part 8 of each 24-wide query head, values 16 wide)
    # with YaRN and its mscale on the scores; a dense first layer, then 8 routed experts in 4
    # groups (top-2 groups, 2 experts per token, weights scaled by 2) beside 2 shared ones.
    "deepseek_v2": {
        **_COMMON,
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "num_hidden_layers": 2,
        "num_key_value_heads": 4,
        "q_lora_rank": None,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "topk_method": "group_limited_greedy",
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.0,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 128,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        "tie_word_embeddings": False,
    },
    # M-RoPE in sections of 2/3/3 frequencies (head_dim 16); q/k/v biases. The vision tower:
    # 4 blocks, windows of 2 x 2 merge blocks (56 px) with full attention in blocks 1 and 3.
    # Image token ids follow the SmolLM2 vocabulary (max.testing.tiny_vl_processor's tokenizer).
    # Gemma 3 with images: the tiny Gemma 3 decoder (window 5, narrower than an image's 9
    # tokens, so image tokens see ahead inside the window's reach back) under a SigLIP
    # tower of 6 x 6 patches pooled to 3 x 3 tokens; the image token ids of the tokenizer
    # written by `tiny_gemma3_vl` (after SmolLM2's ids).
    "gemma3_vl": {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {
            **_COMMON,
            "model_type": "gemma3_text",
            "vocab_size": TOKENIZER_VOCAB + 8,
            "num_hidden_layers": 3,
            "head_dim": 32,
            "query_pre_attn_scalar": 24,
            "sliding_window": 5,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "rope_theta": 1000000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "rope_local_base_freq": 10000.0,
            "hidden_activation": "gelu_pytorch_tanh",
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 48,
            "patch_size": 8,
            "vision_use_head": False,
        },
        "mm_tokens_per_image": 9,
        "boi_token_index": TOKENIZER_VOCAB,
        "eoi_token_index": TOKENIZER_VOCAB + 1,
        "image_token_index": TOKENIZER_VOCAB + 2,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "qwen2_5_vl": {
        **_COMMON,
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": vl.VOCAB_SIZE,
        "num_hidden_layers": 3,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        "vision_start_token_id": vl.VISION_START_TOKEN_ID,
        "vision_end_token_id": vl.VISION_END_TOKEN_ID,
        "image_token_id": vl.IMAGE_TOKEN_ID,
        "video_token_id": vl.VIDEO_TOKEN_ID,
        "vision_config": {
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1, 3],
            "in_channels": 3,
        },
    },
}
