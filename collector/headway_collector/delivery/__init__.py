"""Webhooks from the model's transitions (docs/collector.md, "Transitions, the stream and
webhooks"): signed JSON POSTs, retried until a 2xx."""

from .runner import WebhookThreads, backoff

__all__ = ["WebhookThreads", "backoff"]
