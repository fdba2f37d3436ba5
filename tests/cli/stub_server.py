"""A tiny in-memory stand-in for the server's run endpoints, to drive `dstack apply` in a
real subprocess without the real server (the lead's e2e tests cover that)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .factories import jpd, ts

OFFER = {"backend": "local", "region": "local", "price": 0.5,
         "instance": jpd(backend="local", gpus=0)["instance_type"]}


class StubState:
    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.uploads: list[bytes] = []
        self.gets_until_running = 1
        self.final_status = "done"
        self.applied: list[tuple[str, str]] = []
        self.cancel_replacements = False
        self.list_requests: list[dict[str, Any]] = []

    def make_run(self, spec: dict[str, Any], status: str = "submitted") -> dict[str, Any]:
        name = spec.get("run_name") or "gen-name"
        spec = {**spec, "run_name": name}
        return {
            "id": f"id-{name}", "project_name": "main", "user": "admin", "submitted_at": ts(1),
            "last_processed_at": ts(0), "status": status, "status_message": status,
            "run_spec": spec, "gets": 0,
            "jobs": [{"job_spec": {"job_name": f"{name}-0-0"}, "job_submissions": [{
                "id": "sub-1", "submitted_at": ts(1), "last_processed_at": ts(0),
                "status": status, "status_message": status,
                "job_provisioning_data": jpd(backend="local", gpus=0)}]}],
        }


def _set_status(run: dict[str, Any], status: str, message: str | None = None) -> None:
    run["status"] = status
    run["status_message"] = message or status
    sub = run["jobs"][0]["job_submissions"][0]
    sub["status"], sub["status_message"] = status, message or status


def handle(state: StubState, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    state.calls.append(path)
    if path.endswith("/runs/get_plan"):
        spec = body["run_spec"]
        current = state.runs.get(spec.get("run_name") or "")
        return 200, {
            "project_name": "main", "user": "admin", "run_spec": spec,
            "job_plans": [{"job_spec": {"job_name": "x", "requirements": {"spot": "on-demand"}},
                           "offers": [OFFER, OFFER, OFFER], "total_offers": 7,
                           "max_price": 3.0}],
            "current_resource": current, "action": "update" if current else "create",
        }
    if path.endswith("/runs/apply"):
        spec = body["plan"]["run_spec"]
        current = state.runs.get(spec.get("run_name") or "")
        in_place = (
            body["plan"].get("current_resource") is not None
            and spec["configuration"].get("type") == "service"
        )
        if current and current["status"] not in ("done", "failed", "terminated") and in_place:
            current["run_spec"] = spec
            current["deployment_num"] = current.get("deployment_num", 0) + 1
            return 200, current
        if current and current["status"] not in ("done", "failed", "terminated"):
            if body.get("force"):
                # Like the server: the active run is asked to stop and keeps the new spec; the
                # answer is the old run; the new one appears when the old one has ended.
                current["replacement"] = spec
                _set_status(current, "terminating")
                state.applied.append(("replace", current["id"]))
                return 200, current
            return 400, {"detail": [{"msg": "Run is already active", "code": "resource_exists"}]}
        run = state.make_run(spec)
        state.runs[run["run_spec"]["run_name"]] = run
        return 200, run
    if path.endswith("/runs/get"):
        run = state.runs.get(body.get("run_name", ""))
        if run is None:
            return 400, {"detail": [{"msg": "Run not found", "code": "resource_not_exists"}]}
        run["gets"] += 1
        if run.get("replacement") is not None and state.cancel_replacements:
            run.pop("replacement")  # `dstack stop NAME` meanwhile: the old run just ends
            _set_status(run, "terminated", "stopped")
        if run.get("replacement") is not None and run["gets"] > 1:
            # The old run ended and, in the same step, its replacement was submitted.
            _set_status(run, "terminated", "stopped")
            new = state.make_run(run.pop("replacement"))
            new["id"] = f"{run['id']}-next"
            state.runs[body["run_name"]] = run = new
            run["gets"] += 1
        if run["status"] == "submitted" and run["gets"] > state.gets_until_running:
            _set_status(run, "running")
        elif run["status"] == "running" and run["gets"] > state.gets_until_running + 2:
            _set_status(run, state.final_status, "exited (0)"
                        if state.final_status == "done" else "exited (3)")
        return 200, run
    if path.endswith("/runs/stop"):
        for name in body["runs_names"]:
            _set_status(state.runs[name], "terminated", "stopped")
        return 200, {}
    if path.endswith("/logs/poll"):
        if body.get("next_token") is None:
            logs = [{"timestamp": ts(0), "message": base64.b64encode(b"line one\n").decode()},
                    {"timestamp": ts(0), "message": base64.b64encode(b"line two\n").decode()}]
            return 200, {"logs": logs, "next_token": "2"}
        return 200, {"logs": [], "next_token": None}
    if path.endswith("/fleets/list"):
        return 200, []
    if path == "/api/runs/list":
        state.list_requests.append(body)
        runs = list(reversed(state.runs.values()))  # newest first, as the server sends them
        if body.get("only_active"):
            runs = [r for r in runs if r["status"] not in ("done", "failed", "terminated")]
        return 200, runs[: body.get("limit") or 100]
    return 404, {"detail": "Not Found"}


def serve(state: StubState) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            if path.endswith("/repos/upload_code"):
                blob = _multipart_file(raw, self.headers["Content-Type"])
                state.uploads.append(blob)
                status, payload = 200, {"hash": hashlib.sha256(blob).hexdigest()}
            else:
                status, payload = handle(state, path, json.loads(raw or b"{}"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _multipart_file(raw: bytes, content_type: str) -> bytes:
    boundary = re.search(r"boundary=(\S+)", content_type).group(1).encode()
    for part in raw.split(b"--" + boundary):
        if b'name="file"' in part:
            return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    return b""
