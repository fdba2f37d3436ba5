"""Shared by the IDE pre-install tests (unit and e2e): a build tarball shaped like the vendors'
and a loopback HTTP server that serves fixed paths and records what was asked for."""

from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def server_tarball(commit: str = "x") -> bytes:
    """A server build as the vendors ship it: one top-level folder around everything."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text, mode in [
            ("vscode-server-linux-x64/bin/code-server", "#!/bin/sh\necho stub-server\n", 0o755),
            ("vscode-server-linux-x64/product.json", f'{{"commit": "{commit}"}}\n', 0o644),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Files:
    """A loopback HTTP server with fixed paths (404 for the rest); records every request."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                files.requests.append(self.path)
                body = files.routes.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
