"""The server itself: liveness (`/healthcheck`, unauthenticated, for load balancers) and its
version (`dstack` compares it with its own)."""

from __future__ import annotations

from fastapi import APIRouter

from dstack.version import __version__

router = APIRouter()


@router.get("/healthcheck")
async def healthcheck() -> dict:
    return {"status": "running"}


@router.post("/api/server/get_info")
async def get_info() -> dict:
    return {"server_version": __version__}
