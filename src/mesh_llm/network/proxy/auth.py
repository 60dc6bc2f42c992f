"""API keys on the HTTP edges (``--api-key``): who may use :9337 and :3131's mutating routes.

A request carries its key as ``Authorization: Bearer KEY`` (OpenAI SDKs) or ``x-api-key: KEY``
(Anthropic SDKs). Keys are compared in constant time. Pure: takes header values, returns a
verdict.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

__all__ = ["UNAUTHORIZED_MESSAGE", "ApiKeys"]

UNAUTHORIZED_MESSAGE = (
    "missing or invalid API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
)


class ApiKeys:
    """The set of accepted keys; empty means the API is open."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def presented(self, header: Callable[[str], str | None]) -> str | None:
        """The key a request presents, from ``header(name)`` (case-insensitive lookup)."""
        authorization = header("authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        api_key = header("x-api-key")
        if api_key is not None and api_key.strip():
            return api_key.strip()
        return None

    def allows(self, header: Callable[[str], str | None]) -> bool:
        """Whether the request may go on: no keys configured, or one of them presented."""
        if not self._keys:
            return True
        key = self.presented(header)
        if key is None:
            return False
        candidate = key.encode()
        # Compare against every key so the time does not say which one nearly matched.
        matched = False
        for accepted in self._keys:
            matched |= hmac.compare_digest(candidate, accepted)
        return matched
