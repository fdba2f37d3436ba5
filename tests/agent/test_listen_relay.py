"""`--listen` (an agent behind a jump host binds a non-loopback address on request only) and
the CONNECT relay's target rule (loopback only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.agent import main, relay


def test_host_still_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    assert main.main(["--home", str(tmp_path), "--host", "10.1.2.3"]) == 2
    args = main.parse_args(["--home", str(tmp_path), "--listen", "0.0.0.0"])
    assert args.listen == "0.0.0.0" and args.host == "127.0.0.1"


def test_relay_targets_loopback_only() -> None:
    assert relay.target_of("127.0.0.1:2222") == 2222
    assert relay.target_of("localhost:80") == 80
    for bad, status in (("10.0.0.1:22", 403), ("example.com:22", 403), ("127.0.0.1:0", 400)):
        with pytest.raises(relay.RelayError) as info:
            relay.target_of(bad)
        assert info.value.status == status
