"""Command-line entry points (`pipelines`, installed as the `max` command)."""
