"""Plain `pytest` runs (outside Bazel) keep to the local Hugging Face cache, as the Bazel
tests do through .bazelrc's test_env: the product downloads Hub repos when online, the
tests never do, except from the local stand-in of the Hub (max.testing.hub_stand_in)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
