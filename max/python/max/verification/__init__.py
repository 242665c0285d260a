"""Logit verification: run this framework and a PyTorch reference on the same prompts,
compare their logits, and find the layer where they part.

Front ends: `max/tests/integration/tools/generate_llm_logits.py`, `.../compare_layers.py`,
`max/tests/integration/accuracy/verify.py` and `verify_pipelines.py`.
"""
