"""The request models' base: a field marked AsSent keeps what the client sent, every model
remembers its keys in the client's order, and a schema error names the field's path."""

from typing import Annotated

import pytest

from max.serve.api_errors import ApiError
from max.serve.request_body import AsSent, RequestBody


class _Inner(RequestBody):
    flag: Annotated[bool | None, AsSent] = None


class _Body(RequestBody):
    count: Annotated[int | None, AsSent] = None
    plain: int | None = None
    inner: _Inner | None = None
    items: list[_Inner] | None = None


def test_as_sent_keeps_the_value_the_schema_accepted():
    body = _Body.from_json({"count": True, "plain": True, "inner": {"flag": "yes"}})
    assert body.count is True and body.plain == 1  # AsSent: as sent; plain: converted
    assert body.inner.flag == "yes"


def test_the_keys_sent_in_their_order_and_null_is_sent():
    body = _Body.from_json({"plain": None, "extra": [1], "count": 2})
    assert body.sent_keys == ("plain", "extra", "count")
    assert body.sent("plain") and not body.sent("inner")
    assert body.as_sent() == {"plain": None, "extra": [1], "count": 2}


def test_a_schema_error_names_the_deepest_field():
    with pytest.raises(ApiError) as info:
        _Body.from_json({"count": "x", "items": [{"flag": []}]})
    assert (info.value.param, info.value.code) == ("items[0].flag", "invalid_parameter")
    assert info.value.message.startswith("'items[0].flag': Input should be a valid boolean")
