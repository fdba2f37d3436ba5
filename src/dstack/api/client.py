"""Typed HTTP client of the server API (docs/api.md).

Every failure becomes a `ClientError` whose message is the text the original CLI prints, so
the CLI never has to know about HTTP and SDK users get the same messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

# ServerError is imported from here by the CLI and SDK users.
from dstack.api.http_errors import ServerError, _retry_after, error_from_response  # noqa: F401
from dstack.api.transport import ConnectFailed, TimedOut, TransportFailed, Transports
from dstack.errors import ClientError
from dstack.version import __version__

if TYPE_CHECKING:
    # Models are imported by the methods that parse them: `dstack ps` should not pay for
    # building the pydantic schemas of events, fleets, backends, ... (issue 16).
    from dstack.models.events import Event
    from dstack.models.fleets import Fleet
    from dstack.models.logs import JobSubmissionLogs, PollLogsRequest
    from dstack.models.metrics import JobMetrics
    from dstack.models.runs import Run, RunPlan, RunSpec
    from dstack.models.secrets import Secret
    from dstack.models.server_config import BackendInfo
    from dstack.models.users import Project, User
    from dstack.models.volumes import Gateway, Volume

T = TypeVar("T")

CONNECT_TRIES = 3


class APIClient:
    """One server, one user token, one current project."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        project: str | None = None,
        *,
        timeout: float = 60.0,
        retry_delay: float = 1.0,
        api_version: str | None = None,
    ) -> None:
        import os

        self.base_url = base_url.rstrip("/")
        self.project = project
        self.retry_delay = retry_delay
        headers = {
            "X-API-VERSION": api_version
            or os.environ.get("DSTACK_CLIENT_API_VERSION")
            or __version__
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._transports = Transports(self.base_url, headers, timeout)

    @classmethod
    def from_config(cls, project: str | None = None, **kwargs: Any) -> APIClient:
        """Build a client from `~/.dstack/config.yml` and the DSTACK_* environment."""
        from dstack.client_config import get_project_config

        cfg = get_project_config(project)
        return cls(cfg.url, cfg.token, cfg.name, **kwargs)

    def close(self) -> None:
        self._transports.close()

    @property
    def _http(self) -> Any:
        """The httpx client; assigning one (e.g. a TestClient) sends every call through it."""
        return self._transports.httpx()._http

    @_http.setter
    def _http(self, client: Any) -> None:
        self._transports.use_client(client)

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------

    def request(self, path: str, body: Any = None, *, method: str = "POST", **kw: Any) -> Any:
        """Send one call; retry only when the server could not be reached at all."""
        for attempt in range(CONNECT_TRIES):
            try:
                response = self._transports.send(method, path, body, kw)
                wait = _retry_after(response)
                if wait is None or attempt == CONNECT_TRIES - 1:
                    break
                time.sleep(wait)  # busy database: nothing was written, so asking again is safe
                continue
            except ConnectFailed as e:
                if attempt == CONNECT_TRIES - 1:
                    raise ClientError(f"Failed to connect to dstack server {self.base_url}") from e
                time.sleep(self.retry_delay)
            except TimedOut as e:
                raise ClientError(f"Request to dstack server {self.base_url} timed out") from e
            except TransportFailed as e:
                raise ClientError(f"Failed to talk to dstack server {self.base_url}: {e}") from e
        if response.status_code >= 400:
            raise error_from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as e:
            raise ClientError(f"Unexpected answer from {response.url}") from e

    def _p(self, path: str, project: str | None = None) -> str:
        name = project or self.project
        if not name:
            raise ClientError("No project specified")
        return f"/api/project/{name}/{path}"

    @staticmethod
    def _parse(model: Callable[..., T] | type[T], data: Any) -> T:
        from pydantic import BaseModel, TypeAdapter, ValidationError

        try:
            if (
                isinstance(model, type)
                and not hasattr(model, "__origin__")
                and issubclass(model, BaseModel)
            ):
                return model.model_validate(data)
            return TypeAdapter(model).validate_python(data)
        except ValidationError as e:
            raise ClientError(f"Unexpected answer from the server: {e}") from e

    # -- server, users, projects -------------------------------------------------------

    def get_server_info(self) -> dict[str, Any]:
        return self.request("/api/server/get_info") or {}

    def get_my_user(self) -> User:
        from dstack.models.users import User

        return self._parse(User, self.request("/api/users/get_my_user"))

    def list_projects(self) -> list[Project]:
        from dstack.models.users import Project

        return self._parse(list[Project], self.request("/api/projects/list"))

    def get_project(self, name: str) -> Project:
        from dstack.models.users import Project

        return self._parse(Project, self.request(f"/api/projects/{name}/get"))

    # -- administration: users, projects, members (docs/teams.md) -----------------------

    def list_users(self) -> list[User]:
        from dstack.models.users import User

        return self._parse(list[User], self.request("/api/users/list"))

    def get_user(self, username: str) -> User:
        from dstack.models.users import User

        return self._parse(User, self.request("/api/users/get_user", {"username": username}))

    def create_user(self, username: str, global_role: str = "user",
                    email: str | None = None) -> User:  # fmt: skip
        from dstack.models.users import User

        body = {"username": username, "global_role": global_role, "email": email}
        return self._parse(User, self.request("/api/users/create", body))

    def update_user(self, username: str, **fields: Any) -> User:
        """`fields`: global_role, email, active; only those given change."""
        from dstack.models.users import User

        return self._parse(
            User, self.request("/api/users/update", {"username": username, **fields})
        )

    def refresh_token(self, username: str) -> User:
        from dstack.models.users import User

        return self._parse(User, self.request("/api/users/refresh_token", {"username": username}))

    def delete_users(self, usernames: list[str]) -> None:
        self.request("/api/users/delete", {"users": usernames})

    def create_project(self, name: str, is_public: bool = False) -> Project:
        from dstack.models.users import Project

        body = {"project_name": name, "is_public": is_public}
        return self._parse(Project, self.request("/api/projects/create", body))

    def delete_projects(self, names: list[str]) -> None:
        self.request("/api/projects/delete", {"projects_names": names})

    def update_project(self, name: str, is_public: bool) -> Project:
        from dstack.models.users import Project

        body = {"is_public": is_public}
        return self._parse(Project, self.request(f"/api/projects/{name}/update", body))

    def add_members(self, name: str, members: list[dict[str, str]]) -> Project:
        from dstack.models.users import Project

        body = {"members": members}
        return self._parse(Project, self.request(f"/api/projects/{name}/add_members", body))

    def remove_members(self, name: str, usernames: list[str]) -> Project:
        from dstack.models.users import Project

        body = {"usernames": usernames}
        return self._parse(Project, self.request(f"/api/projects/{name}/remove_members", body))

    # -- runs ----------------------------------------------------------------------------

    def upload_code(self, archive: bytes, repo_id: str = "none") -> str:
        files = {"file": ("code.tar.gz", archive, "application/gzip")}
        data = self.request(self._p("repos/upload_code"), params={"repo_id": repo_id}, files=files)
        return (data or {}).get("hash", "")

    def get_run_plan(self, run_spec: RunSpec, max_offers: int | None = None) -> RunPlan:
        from dstack.models.runs import RunPlan

        body = {"run_spec": run_spec.model_dump(mode="json"), "max_offers": max_offers}
        return self._parse(RunPlan, self.request(self._p("runs/get_plan"), body))

    def apply_run_plan(
        self, run_spec: RunSpec, current_resource: Run | None = None, force: bool = False
    ) -> Run:
        """Submit a run, update an active service in place (`current_resource` given), or,
        with `force`, replace an active run that cannot be updated in place: the server asks
        it to stop and submits `run_spec` under the same name once it has finished, all from
        this one call. The answer is then the old run (same `id` as before, now stopping);
        the new run is the latest of the name once the old one has ended (docs/api.md)."""
        from dstack.models.runs import Run

        plan = {
            "run_spec": run_spec.model_dump(mode="json"),
            "current_resource": current_resource.model_dump(mode="json")
            if current_resource
            else None,
        }
        body = {"plan": plan, "force": force}
        return self._parse(Run, self.request(self._p("runs/apply"), body))

    def get_run_raw(self, name: str | None = None, run_id: str | None = None) -> dict[str, Any]:
        body = {"id": run_id} if run_id else {"run_name": name}
        return self.request(self._p("runs/get"), body)

    def get_run(self, name: str | None = None, run_id: str | None = None) -> Run:
        from dstack.models.runs import Run

        return self._parse(Run, self.get_run_raw(name, run_id))

    def stop_runs(self, names: list[str], abort: bool = False) -> None:
        self.request(self._p("runs/stop"), {"runs_names": names, "abort": abort})

    def delete_runs(self, names: list[str]) -> None:
        self.request(self._p("runs/delete"), {"runs_names": names})

    def list_runs_raw(
        self,
        project: str | None = None,
        *,
        only_active: bool = False,
        limit: int = 100,
        job_submissions_limit: int | None = None,
    ) -> list[dict[str, Any]]:
        body = {
            "project_name": project or self.project,
            "only_active": only_active,
            "limit": limit,
            "job_submissions_limit": job_submissions_limit,
            "ascending": False,
        }
        return self.request("/api/runs/list", body) or []

    def list_runs(self, project: str | None = None, **kwargs: Any) -> list[Run]:
        return self.parse_runs(self.list_runs_raw(project, **kwargs))

    def parse_runs(self, raw: list[dict[str, Any]]) -> list[Run]:
        """Runs from `list_runs_raw`'s answer (or a part of it: parse only what is shown)."""
        from dstack.models.runs import Run

        return self._parse(list[Run], raw)

    def poll_logs(self, req: PollLogsRequest) -> JobSubmissionLogs:
        from dstack.models.logs import JobSubmissionLogs

        body = req.model_dump(mode="json")
        if not req.wait:
            body.pop("wait")  # the field is this server's own: others need never see it
        return self._parse(JobSubmissionLogs, self.request(self._p("logs/poll"), body))

    def get_job_metrics(
        self,
        run_name: str,
        replica_num: int = 0,
        job_num: int = 0,
        limit: int = 1,
        after: datetime | None = None,
        before: datetime | None = None,
    ) -> JobMetrics:
        """Named series of one job's CPU, memory and GPU metrics, newest `limit` points."""
        from dstack.models.metrics import JobMetrics

        params: dict[str, Any] = {"replica_num": replica_num, "job_num": job_num, "limit": limit}
        if after is not None:
            params["after"] = after.isoformat()
        if before is not None:
            params["before"] = before.isoformat()
        path = self._p(f"metrics/job/{quote(run_name, safe='')}")
        return self._parse(JobMetrics, self.request(path, method="GET", params=params))

    def list_offers(self, run_spec: RunSpec, max_offers: int | None = None) -> dict[str, Any]:
        """Raw answer (`offers`, `total_offers`) with the offers parsed into models."""
        from dstack.models.offers import InstanceOfferWithAvailability

        body = {"run_spec": run_spec.model_dump(mode="json"), "max_offers": max_offers}
        data = self.request(self._p("offers/list"), body) or {}
        offers = self._parse(list[InstanceOfferWithAvailability], data.get("offers", []))
        return {
            "offers": offers,
            "total_offers": data.get("total_offers", len(offers)),
            "notes": list(data.get("notes") or []),
        }

    def list_gpus(self, run_spec: RunSpec, group_by: list[str]) -> dict[str, Any]:
        """Offers grouped per GPU (`gpus`, parsed) and the server's `notes`."""
        from dstack.models.gpus import GpuGroup

        body = {"run_spec": run_spec.model_dump(mode="json"), "group_by": group_by}
        data = self.request(self._p("gpus/list"), body) or {}
        return {
            "gpus": self._parse(list[GpuGroup], data.get("gpus", [])),
            "notes": list(data.get("notes") or []),
        }

    # -- fleets, volumes, gateways ----------------------------------------------------------

    def list_fleets_raw(self) -> list[dict[str, Any]]:
        return self.request(self._p("fleets/list")) or []

    def list_fleets(self) -> list[Fleet]:
        from dstack.models.fleets import Fleet

        return self._parse(list[Fleet], self.list_fleets_raw())

    def get_fleet_raw(self, name: str | None = None, fleet_id: str | None = None) -> dict:
        body = {"id": fleet_id} if fleet_id else {"name": name}
        return self.request(self._p("fleets/get"), body)

    def get_fleet(self, name: str | None = None, fleet_id: str | None = None) -> Fleet:
        from dstack.models.fleets import Fleet

        return self._parse(Fleet, self.get_fleet_raw(name, fleet_id))

    def delete_fleets(self, names: list[str]) -> None:
        self.request(self._p("fleets/delete"), {"names": names})

    def delete_fleet_instances(self, name: str, instance_nums: list[int]) -> None:
        self.request(
            self._p("fleets/delete_instances"), {"name": name, "instance_nums": instance_nums}
        )

    def get_fleet_plan(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request(self._p("fleets/get_plan"), {"spec": spec}) or {}

    def apply_fleet(self, spec: dict[str, Any], current: Any = None, force: bool = False) -> Fleet:
        from dstack.models.fleets import Fleet

        body = {"plan": {"spec": spec, "current_resource": current}, "force": force}
        return self._parse(Fleet, self.request(self._p("fleets/apply"), body))

    # -- backends (configured in the server's config.yml; read-only here) ----------------

    def list_backend_types(self) -> list[str]:
        return self._parse(list[str], self.request("/api/backends/list_types"))

    def list_backends(self, project: str | None = None) -> list[BackendInfo]:
        from dstack.models.server_config import BackendInfo

        return self._parse(list[BackendInfo], self.request(self._p("backends/list", project)))

    def list_secrets(self) -> list[Secret]:
        from dstack.models.secrets import Secret

        return self._parse(list[Secret], self.request(self._p("secrets/list")) or [])

    def get_secret(self, name: str) -> Secret:
        from dstack.models.secrets import Secret

        return self._parse(Secret, self.request(self._p("secrets/get"), {"name": name}))

    def set_secret(self, name: str, value: str) -> Secret:
        from dstack.models.secrets import Secret

        body = {"name": name, "value": value}
        return self._parse(Secret, self.request(self._p("secrets/create_or_update"), body))

    def delete_secrets(self, names: list[str]) -> None:
        self.request(self._p("secrets/delete"), {"secrets_names": names})

    def list_volumes_raw(self) -> list[dict[str, Any]]:
        return self.request(self._p("volumes/list")) or []

    def list_volumes(self) -> list[Volume]:
        from dstack.models.volumes import Volume

        return self._parse(list[Volume], self.list_volumes_raw())

    def get_volume_raw(self, name: str) -> dict[str, Any]:
        return self.request(self._p("volumes/get"), {"name": name})

    def create_volume(self, configuration: dict[str, Any]) -> Volume:
        from dstack.models.volumes import Volume

        data = self.request(self._p("volumes/create"), {"configuration": configuration})
        return self._parse(Volume, data)

    def get_volume_plan(self, configuration: dict[str, Any]) -> dict[str, Any]:
        return self.request(self._p("volumes/get_plan"), {"configuration": configuration}) or {}

    def delete_volumes(self, names: list[str], force: bool = False) -> None:
        self.request(self._p("volumes/delete"), {"names": names, "force": force})

    def list_gateways_raw(self) -> list[dict[str, Any]]:
        return self.request(self._p("gateways/list")) or []

    def list_gateways(self) -> list[Gateway]:
        from dstack.models.volumes import Gateway

        return self._parse(list[Gateway], self.list_gateways_raw())

    def get_gateway_raw(self, name: str) -> dict[str, Any]:
        return self.request(self._p("gateways/get"), {"name": name})

    def create_gateway(self, configuration: dict[str, Any]) -> Gateway:
        from dstack.models.volumes import Gateway

        data = self.request(self._p("gateways/create"), {"configuration": configuration})
        return self._parse(Gateway, data)

    def delete_gateways(self, names: list[str]) -> None:
        self.request(self._p("gateways/delete"), {"names": names})

    # -- events ------------------------------------------------------------------------------

    def list_events(
        self,
        project: str | None = None,
        *,
        target_type: str | None = None,
        target_name: str | None = None,
        within_run: str | None = None,
        within_fleet: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Event]:
        from dstack.models.events import Event

        body: dict[str, Any] = {"project_name": project or self.project, "limit": limit}
        if within_run:
            body["within_run"] = within_run
        if within_fleet:
            body["within_fleet"] = within_fleet
        if target_type:
            body["target_type"] = target_type
        if target_name:
            body["target_name"] = target_name
        if since is not None:
            body["since"] = since.isoformat()
        return self._parse(list[Event], self.request("/api/events/list", body))
