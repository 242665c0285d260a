"""Pipelines: the library (`max.pipelines.lib`) and the architectures built on it."""
