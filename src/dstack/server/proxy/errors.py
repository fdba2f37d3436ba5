"""The one error the proxy answers with, in the API's `{"detail": [{"msg", "code"}]}` shape.

Its own module so that the parts that decide a request's fate (`openai.py` resolving a model,
`handler.py` authorizing and forwarding) can raise it without importing each other.
"""

from __future__ import annotations


class HTTPError(Exception):
    """Answered as `status` with `message` and a machine-readable `code` (for a WebSocket: a
    close with code 1008 and the message as reason)."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
