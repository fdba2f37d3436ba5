"""HTTP failures of the server API as the errors the CLI prints (docs/cli.md §1): one place
that knows FastAPI's error shapes, so the client and the CLI never look at status codes."""

from __future__ import annotations

from typing import Any

from dstack.errors import ClientError

# `response` below is an httpx.Response or a transport.Reply: status_code, headers (read with
# lower-case names), text, json() and url are all this module reads.
Response = Any


class ServerError(ClientError):
    """A refusal the server explained (HTTP 4xx with `detail`); `code` lets callers branch."""

    def __init__(
        self, message: str, *, status_code: int, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.code = code
        self.field = field


def _detail_items(response: Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return [{"msg": detail}]
    if isinstance(detail, dict):
        return [detail]
    if isinstance(detail, list):
        return [d if isinstance(d, dict) else {"msg": str(d)} for d in detail]
    return []


def _validation_text(items: list[dict[str, Any]], fallback: str) -> str:
    parts = []
    for item in items:
        loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
        msg = item.get("msg", "")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(p for p in parts if p) or fallback


def _retry_after(response: Response) -> float | None:
    """Seconds to wait before asking again, for a 503 that says (capped: a user waits)."""
    raw = response.headers.get("retry-after", "")
    if response.status_code != 503 or not raw.isdigit():
        return None
    return min(float(raw), 5.0)


def error_from_response(response: Response) -> ClientError:
    """Map an HTTP error to the user-facing message of cli.md §1."""
    status = response.status_code
    url = str(response.url)
    items = _detail_items(response)
    first = items[0] if items else {}
    if status == 403:
        return ClientError(
            f"Access to {url} is denied. Please check your access token", status_code=403
        )
    if status == 422:
        text = _validation_text(items, response.text)
        return ClientError(f"Server validation error: {text}", status_code=422)
    if status == 404 and not first.get("code"):
        # FastAPI's `{"detail": "Not Found"}` for an unknown path: not the server's word.
        return ClientError(f"Status code 404 when requesting {url}", status_code=404)
    if status in (400, 404, 409, 413, 503, 507) and first.get("msg"):
        return ServerError(
            str(first["msg"]), status_code=status, code=first.get("code"), field=first.get("field")
        )
    body = response.text[:500]
    return ClientError(
        f"Unexpected error: status code {status} when requesting {url}. {body}", status_code=status
    )
