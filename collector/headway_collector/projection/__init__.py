"""Running the projection: fold workers, their partitions, leases and watermarks, model generations."""

from __future__ import annotations

from .runner import Mode, Projection, rescore, serve_models
from .worker import ModelBook

__all__ = ["Mode", "ModelBook", "Projection", "rescore", "serve_models"]
