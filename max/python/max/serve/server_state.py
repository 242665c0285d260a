"""What the HTTP server's parts share: the engine, the tokenizer, the limits, the metrics.

One `ServerState` is made by `serve` (server.py), or by a test around a fake engine, and
given to `create_app`; the route handlers, the HTTP guard and the drain on SIGTERM read it
(and the guard and the drain update its counters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.pooling.pooling_config import PoolingConfig
from max.serve.chat_images import MediaOptions
from max.serve.engine_handle import EngineHandle
from max.serve.metrics import ServerMetrics
from max.serve.request_limits import ServerLimits


@dataclass
class ServerState:
    """What the handlers share."""

    tokenizer: TextTokenizer | None  # None: --skip-tokenizer-init, token ids only
    engine: EngineHandle  # a SupervisedEngine, or an EnginePool of them (data-parallel replicas)
    served_model_name: str
    max_seq_len: int
    vocab_size: int
    api_key: str | None = None
    metrics_need_api_key: bool = False
    limits: ServerLimits = field(default_factory=ServerLimits)
    log_requests: bool = False
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    draining: bool = False  # SIGTERM: finish what is in flight, take nothing new
    active_requests: int = 0  # generation requests admitted and not yet answered
    allowed_origins: list[str] = field(default_factory=list)  # CORS: none unless configured
    media: MediaOptions = field(default_factory=MediaOptions)  # which images chats may hold
    reasoning_parser: str | None = None  # --reasoning-parser: qwen3, deepseek_r1 (None: no split)
    tool_call_parser: str | None = None  # --tool-call-parser (None: the chat template's format)
    lora_adapters: dict[str, str] | None = None  # LoRA adapters by name -> path (None: --enable-lora off)
    embedding: PoolingConfig | None = None  # --task embed: how the model pools (None: it generates)
