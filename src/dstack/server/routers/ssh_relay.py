"""`/api/project/{project}/runs/{run}/ssh`: the WebSocket `dstack ssh-proxy` relays a job's SSH
session through (services/job_ssh.py). Thin: access is decided by the app's gate
(routers/deps.enforce), the job and the stream are the service's; this module only speaks
WebSocket.

A refusal is answered before the upgrade, as a plain HTTP response with the REST API's
`{"detail": [...]}` body and status (403, 404, 409, 502), so the client can print the reason."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from dstack.server.routers.deps import ProjectAccess, project_access
from dstack.server.services import job_ssh

router = APIRouter()


@router.websocket("/api/project/{project_name}/runs/{run_name}/ssh")
async def ssh_relay(
    websocket: WebSocket,
    run_name: str,
    replica_num: int = 0,
    job_num: int = 0,
    a: ProjectAccess = Depends(project_access),
) -> None:
    await a.session.close()  # a long SSH session holds no database connection
    try:
        reader, writer = await job_ssh.open_job_stream(
            websocket.app.state.ctx, a.project, run_name, replica_num, job_num
        )
    except job_ssh.RelayRefused as e:
        await _refuse(websocket, e)
        return
    try:
        await websocket.accept()
    except BaseException:
        await job_ssh.close_stream(writer)
        raise

    async def receive() -> bytes | None:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        return message.get("bytes") or (message.get("text") or "").encode()

    await job_ssh.relay(receive, websocket.send_bytes, reader, writer)
    connected = WebSocketState.CONNECTED
    if websocket.client_state == connected and websocket.application_state == connected:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close(1000)


async def _refuse(websocket: WebSocket, e: job_ssh.RelayRefused) -> None:
    body = {"detail": [{"msg": e.message, "code": e.code, "field": None}]}
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(body, status_code=e.status))
        return
    # A server without denial responses: accept, then close with the reason (4000 + status).
    await websocket.accept()
    await websocket.close(4000 + e.status, e.message[:120])
