"""Faults EC2 has and moto never shows: a small HTTP proxy in front of moto that answers chosen
calls with EC2's own error response (the XML a real endpoint sends), and passes everything else
through. The server under test is pointed at the proxy, so it sees the error exactly as boto3
reports a real one: no code path of the backend knows it is being tested.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    action: str  # EC2 action, e.g. RunInstances
    code: str  # EC2 error code, e.g. InsufficientInstanceCapacity
    message: str
    times: int = 1_000_000  # how many matching calls fail
    # Only calls whose form parameters include these (e.g. {"InstanceType": "p4d.24xlarge"}).
    when: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, params: dict[str, str]) -> bool:
        if params.get("Action") != self.action or self.hits >= self.times:
            return False
        return all(params.get(k) == v for k, v in self.when.items())


ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)


class EC2Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.calls: list[dict[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
                fault = proxy._fault(params)
                if fault is not None:
                    xml = ERROR_XML.format(code=fault.code, message=fault.message, rid="dstack")
                    self._send(400, xml.encode(), "text/xml")
                    return
                status, data, ctype = proxy._forward(self.path, dict(self.headers), body)
                self._send(status, data, ctype)

            def _send(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _fault(self, params: dict[str, str]) -> Fault | None:
        with self._lock:
            self.calls.append(params)
            for f in self.faults:
                if f.matches(params):
                    f.hits += 1
                    return f
        return None

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        req = urllib.request.Request(self.upstream + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "text/xml")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "text/xml")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
