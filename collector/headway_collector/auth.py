"""Keys: stored as sha256 hashes, compared in constant time, each reaching one project."""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

from starlette.requests import Request

from .config import Config, Project
from .errors import APIError

__all__ = ["authorize", "authorize_key", "hash_key", "new_key"]


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(kind: Literal["write", "read"]) -> str:
    return f"hw_{kind[0]}_" + secrets.token_urlsafe(24)


def authorize(request: Request, config: Config, kind: Literal["write", "read"]) -> Project:
    """The project a request's bearer key reaches for `kind`, or a 401/403 APIError."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "unauthorized", "missing key: send 'Authorization: Bearer <key>'")
    return authorize_key(key.strip(), config, kind)


def authorize_key(key: str, config: Config, kind: Literal["write", "read"]) -> Project:
    """The project `key` reaches for `kind`, or a 401/403 APIError."""
    digest = hash_key(key)
    project = config.project_for_key(digest, kind)
    if project is not None:
        return project
    other: Literal["write", "read"] = "read" if kind == "write" else "write"
    if config.project_for_key(digest, other) is not None:
        raise APIError(403, "forbidden", f"this is a {other} key; this endpoint needs a {kind} key")
    raise APIError(401, "unauthorized", "unknown key")
