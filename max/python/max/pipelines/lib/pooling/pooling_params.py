"""What one embedding request asks of the pooling (the model's own settings are in
`pooling_config.PoolingConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from max.errors import MaxError


@dataclass(frozen=True)
class PoolingParams:
    """An embedding request: its prompt is prefilled and pooled instead of sampled.

    `dimensions` keeps the first that many features (Matryoshka truncation, then the
    vector is normalized again when the model normalizes); None keeps them all.
    """

    dimensions: int | None = None

    def validate(self) -> None:
        """Raises MaxError for a setting out of range."""
        if self.dimensions is not None and self.dimensions < 1:
            raise MaxError(f"dimensions must be at least 1 (got {self.dimensions})")
