"""A real server configured with the AWS backend (config.yml) against moto, offers from a small
gpuhunt catalog, and EC2 faults injected through a proxy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..harness import Server, wait_until, write_config
from . import ec2_hosts
from .ec2_proxy import EC2Proxy


def aws_config(vpc_name: str, user: str) -> dict[str, Any]:
    return {
        "projects": [
            {
                "name": "main",
                "backends": [
                    {
                        "type": "aws",
                        "creds": {
                            "type": "access_key",
                            "access_key": "AKIATESTING",
                            "secret_key": "the-secret-key",
                        },
                        "regions": [ec2_hosts.REGION],
                        "vpc_name": vpc_name,
                        "public_ips": False,
                        "tags": {"team": "ml"},
                        "os_images": {
                            "cpu": {
                                "name": ec2_hosts.AMI_NAME,
                                "owner": ec2_hosts.AMI_OWNER,
                                "user": user,
                            },
                            "nvidia": {
                                "name": ec2_hosts.AMI_NAME,
                                "owner": ec2_hosts.AMI_OWNER,
                                "user": user,
                            },
                        },
                    }
                ],
            }
        ]
    }


@dataclass
class AWSWorld:
    srv: Server
    moto: ec2_hosts.MotoEC2
    booter: ec2_hosts.BootWatcher
    proxy: EC2Proxy
    project_dir: Path

    def apply(self, name: str, text: str, *args: str, timeout: float = 180) -> Any:
        write_config(self.project_dir, name, text)
        return self.srv.cli("apply", "-f", name, "-y", *args, cwd=self.project_dir, timeout=timeout)

    def fleet(self, name: str) -> dict[str, Any]:
        r = self.srv.api("/api/project/main/fleets/get", {"name": name})
        assert r.status_code == 200, r.text
        return r.json()

    def fleet_instances_or_none(self, name: str = "cloud") -> list[dict[str, Any]] | None:
        """The fleet's instances; None once the fleet is gone."""
        r = self.srv.api("/api/project/main/fleets/get", {"name": name})
        return r.json()["instances"] if r.status_code == 200 else None

    def live_ec2(self) -> list[dict[str, Any]]:
        return self.moto.instances(("pending", "running"))

    def wait_live_ec2(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        return wait_until(
            lambda: len(x := self.live_ec2()) == n and x,
            timeout=timeout,
            what=f"{n} live EC2 instances",
        ) if n else wait_until(
            lambda: not self.live_ec2() or None, timeout=timeout, what="no live EC2 instances"
        )  # fmt: skip

    def events(self) -> str:
        return self.srv.cli("event").stdout


def start_server(
    home: Path, moto: ec2_hosts.MotoEC2, proxy: EC2Proxy, vpc_name: str, user: str,
    catalog_dir: Path, extra_env: dict[str, str] | None = None,
) -> Server:  # fmt: skip
    env = {
        **moto.env(),
        "AWS_ENDPOINT_URL": proxy.url,
        "GPUHUNT_CATALOG_DIR": str(catalog_dir),
        "DSTACK_SERVER_LOCAL_BACKEND": "0",
        "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "1",
        "DSTACK_SERVER_UNREACHABLE_GRACE": "60",
        "DSTACK_SERVER_AWS_PROVISIONING_TIMEOUT": "90",
        "DSTACK_SERVER_INVENTORY_SWEEP_SECONDS": "3",
        **(extra_env or {}),
    }
    srv = Server(home=home, extra_env=env)
    srv.home.mkdir(parents=True, exist_ok=True)
    srv.server_dir.mkdir(parents=True, exist_ok=True)
    (srv.server_dir / "config.yml").write_text(yaml.safe_dump(aws_config(vpc_name, user)))
    srv.start()
    return srv


def job_submissions(srv: Server, run_name: str) -> list[dict[str, Any]]:
    run = srv.run(run_name)
    return [s for j in run["jobs"] for s in j["job_submissions"]]


def dump(x: Any) -> str:
    return json.dumps(x, indent=1, default=str)[:4000]
