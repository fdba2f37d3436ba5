"""Fixtures of the AWS backend tests: moto's EC2 server, a VPC whose range the booted hosts
use, and the watcher that boots moto's instances as SSH hosts."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..harness import Server
from . import ec2_hosts
from .ec2_proxy import EC2Proxy
from .server_util import AWSWorld, start_server


@pytest.fixture
def moto_ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[ec2_hosts.MotoEC2]:
    why = ec2_hosts.available()
    if why:
        pytest.skip(why)
    m = ec2_hosts.MotoEC2()
    for k, v in m.env().items():  # boto3 in this process too (the backend's own tests)
        monkeypatch.setenv(k, v)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def vpc(moto_ec2: ec2_hosts.MotoEC2) -> tuple[str, str]:
    """A VPC named for this test, on a random /24 of 10.234.0.0/16 (hosts of tests running
    side by side never share an address)."""
    name = f"dstack-test-{secrets.token_hex(3)}"
    cidr = f"10.234.{secrets.randbelow(250)}.0/24"
    moto_ec2.make_vpc(name, cidr)
    return name, cidr


@pytest.fixture
def booter(moto_ec2: ec2_hosts.MotoEC2, tmp_path: Path) -> Iterator[ec2_hosts.BootWatcher]:
    w = ec2_hosts.BootWatcher(moto_ec2, tmp_path / "ec2-hosts").start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def ec2_proxy(moto_ec2: ec2_hosts.MotoEC2) -> Iterator[EC2Proxy]:
    p = EC2Proxy(moto_ec2.url)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def aws_world_factory(
    tmp_path: Path,
    moto_ec2: ec2_hosts.MotoEC2,
    vpc: tuple[str, str],
    booter: ec2_hosts.BootWatcher,
    ec2_proxy: EC2Proxy,
) -> Iterator[Callable[..., AWSWorld]]:
    """Start a server with the AWS backend (extra env for the test's knobs)."""
    from catalog_fixture import write_test_catalog

    catalog = tmp_path / "catalog"
    write_test_catalog(catalog)
    servers: list[Server] = []

    def make(extra_env: dict[str, str] | None = None) -> AWSWorld:
        srv = start_server(
            tmp_path / "home", moto_ec2, ec2_proxy, vpc[0], booter.user, catalog, extra_env
        )
        servers.append(srv)
        proj = tmp_path / "proj"
        proj.mkdir(exist_ok=True)
        return AWSWorld(srv, moto_ec2, booter, ec2_proxy, proj)

    try:
        yield make
    finally:
        for srv in servers:
            srv.cleanup()
