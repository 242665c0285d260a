"""Output constraints in OpenAI's and vLLM's shapes become one StructuredOutput and the field
that set it; several, or a malformed one, are a 400 naming the field."""

import pytest

from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.serve.api_errors import ApiError
from max.serve.output_constraints import ResponseFormat, StructuredOutputs, output_constraint


def _constraint(response_format=None, structured_outputs=None, **guided):
    rf = ResponseFormat.from_json(response_format) if response_format is not None else None
    so = StructuredOutputs.from_json(structured_outputs) if structured_outputs is not None else None
    return output_constraint(rf, so, guided)


def test_each_shape():
    schema = {"type": "object", "properties": {"b": {}, "a": {}}}
    assert _constraint({"type": "text"}) is None
    assert _constraint({"type": "json_schema", "json_schema": {"schema": schema, "strict": True}}) == (
        "response_format",
        StructuredOutput("json_schema", '{"type":"object","properties":{"b":{},"a":{}}}', True),
    )
    assert _constraint(structured_outputs={"choice": ["yes", "no"]}) == (
        "structured_outputs.choice",
        StructuredOutput("choice", '["yes", "no"]'),
    )
    assert _constraint(grammar="start: 'a'") == ("guided_grammar", StructuredOutput("lark", "start: 'a'"))
    assert _constraint(structured_outputs={"json_object": False, "regex": None}) is None


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"structured_outputs": {"regex": "a", "json_object": True}}, "structured_outputs.json_object"),
        ({"structured_outputs": {"json_object": True, "regex": "a"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"xml": "<a/>"}}, "structured_outputs.xml"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": 1}}}, "response_format.json_schema.strict"),
        ({"choice": "yes"}, "guided_choice"),
    ],
)
def test_errors_name_the_field(kwargs, param):
    with pytest.raises(ApiError) as info:
        _constraint(**kwargs)
    assert info.value.param == param, info.value.message
