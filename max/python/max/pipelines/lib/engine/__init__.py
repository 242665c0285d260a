"""The engine: continuous batching over the paged KV cache. `LLMEngine` steps as schedule ->
run -> process: the `Scheduler` picks each step's tokens, the model runner runs them, the
`OutputProcessor` turns the draws into request outputs; `Request` is a request's engine-side
state, `StepObserver` / `StepRecorder` watch the steps, and `TextGenerator` is the in-
process API (a tokenizer in front of an engine).
"""
