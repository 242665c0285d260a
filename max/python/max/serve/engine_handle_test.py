"""Every engine handle the HTTP side may be given answers the EngineHandle protocol, with
the same `generate` signature."""

import inspect

import pytest

from max.pipelines.lib import PipelineConfig
from max.serve.engine_client import EngineClient
from max.serve.engine_handle import EngineHandle
from max.serve.engine_pool import EnginePool
from max.serve.engine_supervisor import SupervisedEngine
from max.testing.fake_engine import FakeEngine


def _handles():
    config = PipelineConfig()
    return {
        "EngineClient": EngineClient(config),  # not started: no process is spawned
        "SupervisedEngine": SupervisedEngine(config),
        "EnginePool": EnginePool([config, config]),
        "FakeEngine": FakeEngine(),
    }


@pytest.mark.parametrize("name", sorted(_handles()))
def test_each_handle_is_an_engine_handle(name):
    handle = _handles()[name]
    assert isinstance(handle, EngineHandle)
    expected = inspect.signature(EngineHandle.generate)
    assert inspect.signature(type(handle).generate) == expected, name
