"""LoRA adapters over HTTP (vLLM's and MAX's shapes).

A request runs an adapter by naming it as its `model`; `/v1/models` lists each adapter
with the base model as its `parent`. `POST /v1/load_lora_adapter` {"lora_name",
"lora_path"} registers an adapter (a folder, or a Hub repo id fetched here, in the HTTP
process, so the engine only reads a local folder between two steps) and `POST
/v1/unload_lora_adapter` {"lora_name"} forgets it; both sit behind the API key like every
route, and answer 400 on a server started without `--enable-lora`. A request naming an
unknown model gets 404 when LoRA is on (it may name an adapter not loaded yet, as in
vLLM), 400 otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from max.errors import MaxError
from max.pipelines.lib.lora.peft_adapter import adapter_folder
from max.serve.api_errors import ApiError
from max.serve.request_body import RequestBody
from max.serve.request_limits import read_json
from max.serve.server_state import ServerState


class LoadLoRAAdapterRequest(RequestBody):
    """The body of `POST /v1/load_lora_adapter`."""

    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(RequestBody):
    """The body of `POST /v1/unload_lora_adapter` (`lora_int_id` is vLLM's, ignored)."""

    lora_name: str
    lora_int_id: int | None = None


def served_adapter(state: ServerState, model: str) -> str | None:
    """The LoRA adapter a request's `model` names (None: the base model); ApiError if the
    server serves no such model."""
    if model == state.served_model_name:
        return None
    if state.lora_adapters is not None:
        if model in state.lora_adapters:
            return model
        raise ApiError(404, f"The model `{model}` does not exist.", type="NotFoundError", param="model", code="model_not_found")
    raise ApiError(
        400, f"model {model!r} is not served here; this server serves {state.served_model_name!r}",
        param="model", code="model_not_found",
    )  # fmt: skip


def adapter_model_cards(state: ServerState, created: int) -> list[dict[str, Any]]:
    """`/v1/models` entries of the adapters: each with the base model as its parent."""
    return [
        {"id": name, "object": "model", "created": created, "owned_by": "max", "root": path,
         "parent": state.served_model_name, "max_model_len": state.max_seq_len}
        for name, path in (state.lora_adapters or {}).items()
    ]  # fmt: skip


class LoRAHandler:
    """The load and unload routes."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._lock = asyncio.Lock()  # one change at a time: names are checked, then applied

    async def load(self, request: Request) -> Response:
        """Registers an adapter in every engine replica."""
        body = LoadLoRAAdapterRequest.from_json(await read_json(request, self.state.limits))
        adapters = self._adapters()
        name = body.lora_name.strip()
        if not name or "=" in name or name == self.state.served_model_name:
            raise ApiError(400, f"invalid LoRA adapter name {body.lora_name!r}", param="lora_name", code="invalid_parameter")
        async with self._lock:
            if name in adapters:
                raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name", code="invalid_parameter")
            try:
                folder = await asyncio.to_thread(adapter_folder, body.lora_path)
                await self._engine_op(name, str(folder))
            except MaxError as e:
                raise ApiError(400, str(e), param="lora_path", code="invalid_lora_adapter") from None
            adapters[name] = body.lora_path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: Request) -> Response:
        """Forgets an adapter; its running requests finish on it."""
        body = UnloadLoRAAdapterRequest.from_json(await read_json(request, self.state.limits))
        adapters = self._adapters()
        async with self._lock:
            if body.lora_name not in adapters:
                raise ApiError(404, f"The lora adapter '{body.lora_name}' cannot be found.", type="NotFoundError",
                               param="lora_name", code="lora_adapter_not_found")  # fmt: skip
            try:
                await self._engine_op(body.lora_name, None)
            except MaxError as e:
                raise ApiError(400, str(e), param="lora_name", code="invalid_lora_adapter") from None
            del adapters[body.lora_name]
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def _adapters(self) -> dict[str, str]:
        if self.state.lora_adapters is None:
            raise ApiError(400, "LoRA adapters are not enabled on this server (start it with --enable-lora)", code="lora_not_enabled")
        return self.state.lora_adapters

    async def _engine_op(self, name: str, path: str | None) -> None:
        engine = self.state.engine
        if not engine.alive:
            raise ApiError(503, "the engine is not running; retry later", type="server_error", code="engine_unavailable")
        await engine.lora_op(name, path)

