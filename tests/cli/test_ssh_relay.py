"""SSH through the server, the CLI's side: the `Host` block with the relay's ProxyCommand (byte
for byte, idempotent), when the relay is chosen, and `dstack ssh-proxy` itself against a small
WebSocket server in a thread (bytes both ways, the token sent as a header, refusals on stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.cli import sshconfig
from dstack.cli.ssh_relay import (
    forced_route,
    is_local_url,
    proxy_command,
    refusal_text,
    relay_url,
    token_for,
    via_server,
)
from dstack.cli.tunnel import job_hosts
from dstack.client_config import add_project
from dstack.models.runs import JobProvisioningData, JobRuntimeData

from .test_sshconfig import _jpd

SRC = Path(__file__).resolve().parents[2] / "src"

RELAY_BLOCK = """# >>> dstack run web
Host web
    User ubuntu
    IdentityFile /k/id_rsa
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ConnectTimeout 10
    ServerAliveInterval 15
    ProxyCommand /opt/py/bin/python3 -m dstack.cli.main ssh-proxy --url https://dstack.example.com --project main --replica 0 --job 0 web
# <<< dstack run web
"""  # noqa: E501


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DSTACK_SERVER_URL", "DSTACK_TOKEN", "DSTACK_PROJECT", "DSTACK_SSH_VIA_SERVER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _relay_hosts(alias: str = "web") -> list[sshconfig.SSHHost]:
    line = proxy_command(
        "https://dstack.example.com", "main", alias, 0, 0, python="/opt/py/bin/python3"
    )
    jrd = JobRuntimeData(ports={10022: 41000}, username="ubuntu")
    hosts, err = job_hosts(alias, _jpd("ssh", hostname="10.0.0.5"), jrd, Path("/k/id_rsa"), line)
    assert err is None
    return hosts


def test_relay_block_byte_for_byte_and_idempotent(home: Path) -> None:
    path = home / ".dstack" / "ssh" / "config"
    path.parent.mkdir(parents=True)
    path.write_text("# the user's note\n")
    sshconfig.write_hosts("web", _relay_hosts())
    assert path.read_text() == "# the user's note\n" + RELAY_BLOCK
    sshconfig.write_hosts("web", _relay_hosts())  # attaching again changes nothing
    assert path.read_text() == "# the user's note\n" + RELAY_BLOCK
    # Back to the direct path: the same block, rewritten in place, with no ProxyCommand left.
    direct, _ = job_hosts(
        "web", _jpd("local"), JobRuntimeData(ports={10022: 41000}), Path("/k/id_rsa")
    )
    sshconfig.write_hosts("web", direct)
    text = path.read_text()
    assert "ProxyCommand" not in text and "HostName 127.0.0.1\n    Port 41000\n" in text
    assert text.count("# >>> dstack run web") == 1


def test_proxy_command_quotes_and_escapes_percent() -> None:
    line = proxy_command("http://h:1/a%20b", "my proj", "r", 2, 1, python="/p q/python")
    assert line == (
        "'/p q/python' -m dstack.cli.main ssh-proxy --url http://h:1/a%%20b "
        "--project 'my proj' --replica 2 --job 1 r"
    )
    assert "token" not in line


def test_relay_url() -> None:
    assert relay_url("http://127.0.0.1:3000/", "main", "web", 0, 1) == (
        "ws://127.0.0.1:3000/api/project/main/runs/web/ssh?replica_num=0&job_num=1"
    )
    assert relay_url("https://d.example/x", "p", "r", 2, 0).startswith(
        "wss://d.example/x/api/project/p/runs/r/ssh?"
    )


def test_forced_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSTACK_SSH_VIA_SERVER", raising=False)
    assert forced_route() is None and forced_route(True) is True
    for value, want in (("1", True), ("yes", True), ("0", False), ("false", False), ("", None)):
        monkeypatch.setenv("DSTACK_SSH_VIA_SERVER", value)
        assert forced_route() is want, value
    monkeypatch.setenv("DSTACK_SSH_VIA_SERVER", "0")
    assert forced_route(True) is True  # the flag wins


class Probe:
    def __init__(self, answer: bool) -> None:
        self.answer, self.calls = answer, []

    def __call__(self, host: str, port: int) -> bool:
        self.calls.append((host, port))
        return self.answer


def _jpd_ssh(**kw: object) -> JobProvisioningData:
    return _jpd("ssh", hostname="10.0.0.5", ssh_port=2201, **kw)


@pytest.mark.parametrize(
    ("jpd", "url", "forced", "answers", "want", "probed"),
    [
        (_jpd("local"), "http://127.0.0.1:3000", None, True, False, []),
        (_jpd("local"), "http://localhost:3000", None, True, False, []),
        (_jpd("local"), "https://dstack.example.com", None, True, True, []),
        (_jpd("local"), "http://127.0.0.1:3000", True, True, True, []),
        (_jpd_ssh(), "http://127.0.0.1:3000", None, True, False, [("10.0.0.5", 2201)]),
        (_jpd_ssh(), "http://127.0.0.1:3000", None, False, True, [("10.0.0.5", 2201)]),
        (_jpd_ssh(), "http://127.0.0.1:3000", False, False, False, []),
        (
            _jpd_ssh(ssh_proxy={"hostname": "bastion", "port": 22, "username": "j"}),
            "http://127.0.0.1:3000", None, True, True, [],
        ),
        (_jpd("ssh", hostname=""), "http://127.0.0.1:3000", None, True, True, []),
    ],
)  # fmt: skip
def test_via_server_decision(jpd, url, forced, answers, want, probed) -> None:  # noqa: ANN001
    probe = Probe(answers)
    assert via_server(jpd, url, forced, probe) is want
    assert probe.calls == probed


def test_is_local_url() -> None:
    assert is_local_url("http://127.0.0.1:3000") and is_local_url("http://[::1]:3000")
    assert is_local_url("http://0.0.0.0:3000") and is_local_url("http://localhost")
    assert not is_local_url("http://10.1.2.3:3000") and not is_local_url("https://a.example")


def test_token_comes_from_the_config_for_that_server_only(home: Path) -> None:
    add_project("main", "http://127.0.0.1:3000", "secret-token")
    assert token_for("http://127.0.0.1:3000/", "main") == "secret-token"
    with pytest.raises(Exception, match="is on http://127.0.0.1:3000, not http://other:1"):
        token_for("http://other:1", "main")


def test_refusal_text() -> None:
    body = json.dumps({"detail": [{"msg": "Run x is terminated", "code": "c"}]}).encode()
    assert refusal_text(409, body) == "Run x is terminated"
    assert refusal_text(502, b"<html>") == "the server refused the SSH relay (HTTP 502)"


# --- `dstack ssh-proxy` against a WebSocket server -------------------------------------------


class WSServer:
    """Echoes binary messages for a request with the right token; refuses `gone` with 409."""

    def __init__(self) -> None:
        from websockets.datastructures import Headers
        from websockets.http11 import Response
        from websockets.sync.server import serve

        self.paths: list[str] = []

        def process_request(conn, request):  # noqa: ANN001, ANN202
            self.paths.append(request.path)
            if request.headers.get("Authorization") != "Bearer secret-token":
                return Response(403, "Forbidden", Headers(), b"")
            if "/runs/gone/" in request.path:
                msg = "Run gone is terminated; it no longer accepts SSH"
                body = json.dumps({"detail": [{"msg": msg, "code": "run_not_running"}]}).encode()
                headers = Headers({"Content-Type": "application/json"})
                return Response(409, "Conflict", headers, body)
            return None

        def handler(ws) -> None:  # noqa: ANN001
            for message in ws:
                if message == b"":  # the client's end of input: answer it, then hang up
                    ws.send(b"eof seen\n")
                    return
                ws.send(message)

        self.server = serve(handler, "127.0.0.1", 0, process_request=process_request)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def ws_server(home: Path) -> Iterator[WSServer]:
    server = WSServer()
    add_project("main", server.url, "secret-token")
    try:
        yield server
    finally:
        server.server.shutdown()


def _proxy(home: Path, url: str, run: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(SRC)}
    env.pop("DSTACK_SSH_VIA_SERVER", None)
    argv = [sys.executable, "-m", "dstack.cli.main", "ssh-proxy", "--url", url,
            "--project", "main", "--job", "0", run]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=30)


def test_ssh_proxy_relays_stdin_and_stdout(ws_server: WSServer, home: Path) -> None:
    payload = b"SSH-2.0-OpenSSH\r\n" + bytes(range(256)) * 512 + b"\n"
    r = _proxy(home, ws_server.url, "web", payload)
    assert r.returncode == 0, r.stderr
    assert r.stdout == payload + b"eof seen\n"
    assert ws_server.paths == ["/api/project/main/runs/web/ssh?replica_num=0&job_num=0"]


def test_ssh_proxy_refusal_is_one_line_on_stderr(ws_server: WSServer, home: Path) -> None:
    r = _proxy(home, ws_server.url, "gone", b"")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().strip() == "dstack: Run gone is terminated; it no longer accepts SSH"


def test_ssh_proxy_unreachable_server_and_unknown_project(home: Path) -> None:
    add_project("main", "http://127.0.0.1:9", "secret-token")
    r = _proxy(home, "http://127.0.0.1:9", "web", b"")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("dstack: cannot reach the dstack server at ws://")
    os.remove(home / ".dstack" / "config.yml")
    r = _proxy(home, "http://127.0.0.1:9", "web", b"")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "dstack: Project main is not configured"
