"""Text in and out: tokenizers and chat templates, incremental detokenization and stop strings,
tool-call and harmony parsing, and the images of chat prompts.
"""
