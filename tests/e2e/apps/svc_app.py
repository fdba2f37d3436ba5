"""A small service for the proxy's end-to-end tests, standard library only.

Listens on DSTACK_SERVICE_PORT (the replica's port). Endpoints: `/` (who answered), `/echo`
(any method, body and selected headers back), `/stream` (server-sent events, one every 0.3 s),
`/ws` (a WebSocket echo), `/slow` (sleeps), `/reset` (drops the connection), `/health` (200,
or 500 while the file named by $FAIL_HEALTH exists; a line appended to $HEALTH_LOG if set),
`/v1/models`, `/v1/chat/completions` (OpenAI-shaped, `stream: true` supported).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("DSTACK_SERVICE_PORT") or (sys.argv[1] if len(sys.argv) > 1 else 8000))
NAME = os.environ.get("APP_NAME", "app")
REPLICA = os.environ.get("DSTACK_JOB_ID", "?")
MODEL = os.environ.get("MODEL_NAME", "fake-model")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _any(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        if path == "/stream":
            return self._stream()
        if path == "/slow":
            time.sleep(float(os.environ.get("SLOW_SECONDS", "5")))
            return self._json(200, {"slow": True})
        if path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if path == "/health":
            if os.environ.get("HEALTH_LOG"):  # one line per probe (tests count them)
                with open(os.environ["HEALTH_LOG"], "a") as f:
                    f.write(f"{time.time()}\n")
            flag = os.environ.get("FAIL_HEALTH")
            if flag and (os.path.exists(flag) or os.path.exists(f"{flag}.{PORT}")):
                return self._json(500, {"healthy": False})
            return self._json(200, {"healthy": True})
        if path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if path == "/v1/chat/completions":
            return self._chat(json.loads(body or b"{}"))
        return self._json(
            200,
            {
                "app": NAME,
                "replica": REPLICA,
                "method": self.command,
                "path": self.path,
                "body": body.decode(errors="replace"),
                "authorization": self.headers.get("Authorization"),
                "forwarded_prefix": self.headers.get("X-Forwarded-Prefix"),
            },
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(5):
            self._chunk(f"data: {i} {time.time()}\n\n".encode())
            time.sleep(0.3)
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _chat(self, req: dict) -> None:
        text = f"echo: {req.get('messages', [{}])[-1].get('content', '')}"
        if req.get("model") != MODEL:
            return self._json(404, {"error": f"unknown model {req.get('model')}"})
        if not req.get("stream"):
            return self._json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for word in text.split():
            chunk = {
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": word}}],
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            time.sleep(0.1)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        while True:
            frame = _read_frame(sock)
            if frame is None:
                break
            opcode, payload = frame
            if opcode == 8:
                _send_frame(sock, 8, payload[:2])
                break
            if opcode == 9:
                _send_frame(sock, 10, payload)
                continue
            if opcode in (1, 2):
                _send_frame(sock, opcode, b"echo:" + payload)
        self.close_connection = True


def _recv(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    head = _recv(sock, 2)
    if head is None:
        return None
    opcode = head[0] & 0x0F
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", _recv(sock, 2) or b"\0\0")[0]
    elif length == 127:
        length = struct.unpack("!Q", _recv(sock, 8) or b"\0" * 8)[0]
    mask = _recv(sock, 4) if head[1] & 0x80 else b"\0\0\0\0"
    payload = _recv(sock, length) if length else b""
    if payload is None or mask is None:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    sock.sendall(head + payload)


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    print(f"{NAME} listening on {PORT}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
