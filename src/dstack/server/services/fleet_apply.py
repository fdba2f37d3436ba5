"""Fleet plan, apply and delete (`dstack apply -f fleet.dstack.yml`, `dstack fleet delete`).

Everything that can be checked is checked before anything changes on any host: the
configuration, duplicate hosts, a user and a key for every host, and that every new host
answers SSH and accepts the key (a connection that changes nothing on the host). Only then
are rows written; the instance reconciler bootstraps the hosts.

Plans say what apply would do: `create`, `no_changes`, `update` (SSH fleets: hosts added or
removed, done in place) or `recreate` (anything else; the CLI deletes the fleet, waits, and
creates it again).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ServerClientError, StaleResourceError, stale_plan_message
from dstack.models.fleets import Fleet, FleetSpec, FleetStatus
from dstack.models.fleets_config import FleetConfiguration
from dstack.models.instances import InstanceStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.fleet_delete import (
    LIVE,
    current_fleet,
    fleet_event,
    live_instances,
    terminate_instances,
)
from dstack.server.services.fleet_nodes import (
    add_instances,
    check_capabilities,
    choose_offer,
    nodes_of,
)
from dstack.server.services.fleets import fleet_model
from dstack.server.services.hosts import hosts_backend, known_host_key
from dstack.server.services.named_config import parse_named
from dstack.server.services.pool import live_backend_types
from dstack.server.services.ssh_keys import project_keypair


def parse_fleet(spec: dict[str, Any]) -> FleetConfiguration:
    return parse_named(spec.get("configuration") or {}, FleetConfiguration, "fleet")


def public_configuration(conf: FleetConfiguration) -> dict[str, Any]:
    """The configuration as stored and returned: private keys removed."""
    data = conf.model_dump(mode="json")
    ssh = data.get("ssh_config")
    if ssh:
        ssh.pop("ssh_key", None)
        if ssh.get("proxy_jump"):
            ssh["proxy_jump"].pop("ssh_key", None)
        for h in ssh.get("hosts") or []:
            h.pop("ssh_key", None)
            if h.get("proxy_jump"):
                h["proxy_jump"].pop("ssh_key", None)
    return data


def resolve_hosts(conf: FleetConfiguration) -> list[dict[str, Any]]:
    """Each host with the `ssh_config` defaults applied; bad input is a 400 naming the host."""
    ssh = conf.ssh_config
    if ssh is None:
        return []
    out, seen = [], set()
    for i, h in enumerate(ssh.hosts):
        port = h.port or ssh.port or 22
        where = f"ssh_config.hosts[{i}]"
        if (h.hostname, port) in seen:
            raise ServerClientError(
                f"host {h.hostname}:{port} is listed more than once in ssh_config.hosts",
                field=where,
            )
        seen.add((h.hostname, port))
        user = h.user or ssh.user
        key = h.ssh_key or ssh.ssh_key
        if not user:
            raise ServerClientError(f"No ssh user specified for host {h.hostname}", field=where)
        if key is None:
            raise ServerClientError(
                f"No ssh key specified for host {h.hostname}: set identity_file "
                "(the CLI reads the key file and sends it)",
                field=where,
            )
        proxy = h.proxy_jump or ssh.proxy_jump
        if proxy is not None and proxy.ssh_key is None:
            raise ServerClientError(
                f"No ssh key for the proxy_jump of host {h.hostname}", field=where
            )
        out.append(
            {
                "hostname": h.hostname,
                "port": port,
                "user": user,
                "key": key.private,
                "proxy": {
                    "hostname": proxy.hostname,
                    "port": proxy.port,
                    "user": proxy.user,
                    "key": proxy.ssh_key.private,  # type: ignore[union-attr]
                }
                if proxy
                else None,
                "internal_ip": h.internal_ip,
                "blocks": h.blocks if h.blocks != 1 else conf.blocks,
                "network": ssh.network,
                "env": dict(conf.env),
            }
        )
    return out


def host_id(h: dict[str, Any]) -> str:
    return f"{h['user']}@{h['hostname']}:{h['port']}"


def _diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, list[str]]:
    if old == new:
        return "no_changes", []
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed == ["ssh_config"]:
        o, n = dict(old["ssh_config"] or {}), dict(new["ssh_config"] or {})
        oh, nh = o.pop("hosts", []), n.pop("hosts", [])
        if o == n and n:
            key = lambda h: (h["hostname"], h.get("port"))  # noqa: E731
            old_by, new_by = {key(h): h for h in oh}, {key(h): h for h in nh}
            if all(new_by[k] == old_by[k] for k in set(old_by) & set(new_by)):
                added = [k[0] for k in new_by if k not in old_by]
                removed = [k[0] for k in old_by if k not in new_by]
                notes = [f"add host {h}" for h in added] + [f"remove host {h}" for h in removed]
                return "update", notes
    return "recreate", [f"{k} changed" for k in changed]


async def _plan(
    ctx: ServerContext, s: AsyncSession, project: t.Project, spec: dict[str, Any]
) -> tuple[FleetConfiguration, dict[str, Any], t.Fleet | None, str, list[str], list[dict]]:
    conf = parse_fleet(spec)
    public = public_configuration(conf)
    hosts = resolve_hosts(conf)
    current = await current_fleet(s, project, conf.name or "")
    if current is None:
        action, changes, new_hosts = "create", [], hosts
    else:
        old = json.loads(current.spec).get("configuration", {})
        action, changes = _diff(old, public)
        old_names = {(h["hostname"], h["port"]) for h in await _hosts_of(s, current)}
        new_hosts = [h for h in hosts if (h["hostname"], h["port"]) not in old_names]
        if action == "recreate":
            new_hosts = hosts
    _check_backends(ctx, project, conf)
    check_capabilities(ctx, project.id, project.name, public)
    await _check_taken(s, project, conf.name or "", new_hosts)
    await _precheck(ctx, s, project, new_hosts)
    return conf, public, current, action, changes, hosts


async def _hosts_of(s: AsyncSession, fleet: t.Fleet) -> list[dict[str, Any]]:
    return [json.loads(i.remote_connection or "{}") for i in await live_instances(s, fleet)]


def _check_backends(ctx: ServerContext, project: t.Project, conf: FleetConfiguration) -> None:
    """Every backend a fleet names must be configured here and serve this project: a fleet
    never silently ends up with fewer backends than it asked for."""
    for i, name in enumerate(conf.backends or ()):
        btype = getattr(name, "value", name)
        backend = ctx.backends.get(btype, project.id)
        if backend is None:
            configured = ", ".join(ctx.backends.types_for(project.id)) or "none"
            raise ServerClientError(
                f"backend {btype} is not configured on this server for project {project.name} "
                f"(configured: {configured})",
                field=f"backends[{i}]",
            )
        if not backend.serves(project.name):
            owners = ", ".join(sorted(backend.projects or ()))
            raise ServerClientError(
                f"backend {btype} serves only project {owners}: it runs jobs on the server's own "
                f"machine, where its state lives, so project {project.name} cannot use it",
                field=f"backends[{i}]",
            )


async def _check_taken(
    s: AsyncSession, project: t.Project, name: str, hosts: list[dict[str, Any]]
) -> None:
    """A host runs one agent for one fleet: a host already in another fleet is refused."""
    if not hosts:
        return
    rows = (
        await s.execute(
            select(t.Instance, t.Fleet.name)
            .join(t.Fleet, t.Fleet.id == t.Instance.fleet_id)
            .where(
                t.Instance.project_id == project.id,
                t.Instance.remote_connection.is_not(None),
                t.Instance.deleted.is_(False),
                t.Instance.status.in_((*LIVE, InstanceStatus.TERMINATING.value)),
                t.Fleet.name != name,
            )
        )
    ).all()
    for inst, fleet_name in rows:
        rc = json.loads(inst.remote_connection or "{}")
        for h in hosts:
            if (rc.get("hostname"), rc.get("port"), rc.get("user")) == (
                h["hostname"],
                h["port"],
                h["user"],
            ):
                raise ServerClientError(
                    f"host {h['hostname']}:{h['port']} is already in fleet {fleet_name}",
                    field="ssh_config.hosts",
                )


async def _precheck(
    ctx: ServerContext, s: AsyncSession, project: t.Project, hosts: list[dict[str, Any]]
) -> None:
    """Every new host answers SSH and accepts the key, before anything is written. The SSH
    backend is looked up in the context (services never import backends)."""
    backend = hosts_backend(ctx, project.id)
    if not hosts or backend is None:
        return
    known = [await known_host_key(s, project.id, h["hostname"], h["port"]) for h in hosts]

    async def one(h: dict[str, Any], key: str | None) -> str | None:
        try:
            await backend.check_host(h, key)
        except Exception as e:  # noqa: BLE001 - every failure is the user's to read
            return str(e)
        return None

    errors = [
        e
        for e in await asyncio.gather(*(one(h, k) for h, k in zip(hosts, known, strict=True)))
        if e
    ]
    if errors:
        raise ServerClientError("; ".join(errors), field="ssh_config.hosts")


async def get_plan(
    ctx: ServerContext, s: AsyncSession, user: t.User, project: t.Project, spec: dict[str, Any]
) -> dict[str, Any]:
    conf, public, current, action, changes, _ = await _plan(ctx, s, project, spec)
    return {
        "project_name": project.name,
        "user": user.name,
        "spec": {**spec, "configuration": public},
        "effective_spec": {**spec, "configuration": public},
        "current_resource": (await fleet_model(s, current, project)).model_dump(mode="json")
        if current
        else None,
        "action": action,
        "changes": changes,
        "offers": [],
        "total_offers": 0,
    }


async def apply(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    spec: dict[str, Any],
    force: bool,
    planned: dict[str, Any] | None = None,
) -> Fleet:
    conf, public, current, action, changes, hosts = await _plan(ctx, s, project, spec)
    if not force:
        check_fresh(conf.name or "", planned, current)
    nodes = nodes_of(public)
    offer, no_offer = None, None
    if current is None and nodes and nodes.get("target"):
        # Looked up before anything is written (a cloud's offers are network calls).
        live = await live_backend_types(s)
        offer, no_offer = await choose_offer(
            ctx, project.id, project.name, ("new", conf.name, public), live
        )
    now = utcnow()
    if current is not None and (action == "recreate" or (action == "no_changes" and force)):
        raise ServerClientError(
            f"Fleet {conf.name} exists and these changes cannot be applied in place "
            f"({', '.join(changes) or 'forced'}): delete it first (the CLI does so when you "
            "confirm re-creating it)",
            code="resource_exists",
        )
    if current is not None:
        current.generation = (current.generation or 1) + 1
    if current is None:
        current = t.Fleet(
            id=str(uuid.uuid4()),
            project_id=project.id,
            name=conf.name,
            status=FleetStatus.ACTIVE.value,
            spec="{}",
            created_at=now,
            last_processed_at=now,
            dirty=False,
        )
        s.add(current)
        fleet_event(s, current, f"Fleet created by {user.name}", now)
    current.spec = json.dumps(
        FleetSpec(
            configuration=public,
            configuration_path=spec.get("configuration_path"),
            profile=spec.get("profile"),
        ).model_dump(mode="json")
    )
    await s.flush()
    existing = {
        (rc["hostname"], rc["port"]): i
        for i, rc in [
            (i, json.loads(i.remote_connection or "{}")) for i in await live_instances(s, current)
        ]
        if rc
    }
    wanted = {(h["hostname"], h["port"]) for h in hosts}
    removed = [i for k, i in existing.items() if k not in wanted]
    if removed:
        await terminate_instances(s, project, current, removed, now)
    if nodes and offer is not None and action == "create":
        await add_instances(s, current, public, offer, nodes["target"], now, "nodes.target")
    elif nodes and no_offer:
        # Accepted all the same (capacity may come): the reconciler keeps trying for min.
        current.status_message = f"No instance created: {no_offer}"
        fleet_event(s, current, current.status_message, now)
    if conf.ssh_config is not None:
        private, public_key = await project_keypair(s, ctx.box, project)
        num = await _next_num(s, current.id)
        for h in hosts:
            if (h["hostname"], h["port"]) in existing:
                continue
            _add_instance(ctx, s, project, current, h, num, now, public_key)
            num += 1
    await s.commit()
    ctx.hub.wake("instances", "fleets")
    return await fleet_model(s, current, project)


def check_fresh(name: str, planned: dict[str, Any] | None, current: t.Fleet | None) -> None:
    """Refuse a plan made against an older state of the fleet (`planned`, the plan's
    `current_resource`): someone else applied in between, or deleted and re-created it."""
    if not planned or current is None:
        return
    current_gen = current.generation or 1
    # A client that predates generations sends none: only the identity is checked then.
    if planned.get("id") != current.id or planned.get("generation", 0) not in (0, current_gen):
        raise StaleResourceError(
            stale_plan_message("fleet", name, int(planned.get("generation") or 0), current_gen),
            field="plan.current_resource",
            code="stale_plan",
        )


def _add_instance(
    ctx: ServerContext,
    s: AsyncSession,
    project: t.Project,
    fleet: t.Fleet,
    h: dict[str, Any],
    num: int,
    now: Any,
    project_public_key: str,
) -> None:
    backend = hosts_backend(ctx, project.id)
    if backend is None:
        raise ServerClientError(
            "this server has no backend for ssh_config hosts", field="ssh_config"
        )
    backend_type = backend.type
    rc = {
        "hostname": h["hostname"],
        "port": h["port"],
        "user": h["user"],
        "key_enc": ctx.box.encrypt(h["key"]),
        "project_key_enc": project.ssh_private_key,
        "project_public_key": project_public_key,
        "proxy": {
            **{k: v for k, v in h["proxy"].items() if k != "key"},
            "key_enc": ctx.box.encrypt(h["proxy"]["key"]),
        }
        if h["proxy"]
        else None,
        "internal_ip": h["internal_ip"],
        "network": h["network"],
        "blocks": h["blocks"],
        "env": h["env"],
    }
    inst = t.Instance(
        id=str(uuid.uuid4()),
        project_id=project.id,
        fleet_id=fleet.id,
        instance_num=num,
        name=f"{fleet.name}-{num}",
        backend=backend_type,
        region="remote",
        status=InstanceStatus.PENDING.value,
        hostname=h["hostname"],
        agent_token_enc=ctx.box.encrypt(secrets.token_urlsafe(32)),
        remote_connection=json.dumps(rc),
        total_blocks=1,
        idle_duration=-1,  # hosts the user brought are never released for being idle
        created_at=now,
        last_processed_at=now,
        dirty=True,
    )
    s.add(inst)
    events.record(
        s,
        project_id=project.id,
        target_type="instance",
        target_id=inst.id,
        target_name=inst.name,
        message=f"Instance created for host {host_id(h)}",
        now=now,
    )


async def _next_num(s: AsyncSession, fleet_id: str) -> int:
    n = (
        await s.execute(
            select(func.max(t.Instance.instance_num)).where(t.Instance.fleet_id == fleet_id)
        )
    ).scalar()
    return 0 if n is None else n + 1
