"""Webhooks from the model's transitions (SPEC section 4): signed JSON POSTs, retried until a 2xx."""

from .runner import Delivery, backoff

__all__ = ["Delivery", "backoff"]
