"""`dstack server`: start the API server on its embedded default (SQLite, local backend)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from dstack.server.services.bootstrap import MAIN_PROJECT, BootstrapResult
from dstack.server.settings import load_settings


def _known_entry(token_hash: str):  # noqa: ANN202 - a client_config.ProjectConfig or None
    """The client-config entry holding the admin token, when one still matches it."""
    from dstack import client_config
    from dstack.server.services.crypto import hash_token

    try:
        for p in client_config.load_projects():
            if hash_token(p.token) == token_hash:
                return p
    except Exception:  # an unreadable config just means we cannot show the token
        return None
    return None


def _announce(url: str, result: BootstrapResult) -> None:
    from dstack import client_config

    name, default = MAIN_PROJECT, True
    if not result.created:
        # A restart, perhaps on another port: keep the CLI's entry pointed at this server
        # without changing which project the user made the default.
        entry = _known_entry(result.admin_token_hash)
        if entry is not None:
            result.admin_token = result.admin_token or entry.token
            name, default = entry.name, entry.default
    if result.admin_token:
        print(f"The admin token is {result.admin_token}", flush=True)
        try:
            client_config.add_project(name, url, result.admin_token, default=default)
            print("The CLI is configured to use it (~/.dstack/config.yml)", flush=True)
        except Exception as e:  # a broken client config must not stop the server
            print(f"Could not update ~/.dstack/config.yml: {e}", file=sys.stderr, flush=True)
    else:
        print(
            "The admin token was shown when it was created and is in ~/.dstack/config.yml; "
            "set DSTACK_SERVER_ADMIN_TOKEN to choose a new one",
            flush=True,
        )
    for line in result.backends:
        print(line, flush=True)
    print(f"The dstack server is running at {url}", flush=True)
    print(f"The web UI: {ui_link(url, result.admin_token)}", flush=True)


def ui_link(url: str, token: str | None) -> str:
    """The UI's address; with the admin token, a link that signs in (the page stores the token
    and removes it from the address bar). The token is in the fragment, which browsers never
    send to a server, so it stays out of access logs and proxies."""
    from urllib.parse import quote

    base = url.rstrip("/") + "/"
    return f"{base}#token={quote(token, safe='')}" if token else base


def _server_config(server_dir: Path):  # noqa: ANN202 - a models.server_config.ServerConfig
    """The server's config.yml, validated before anything starts: an invalid file stops the
    server with its `file:line` error and a non-zero exit code."""
    from dstack.errors import ConfigurationError
    from dstack.server.server_config import config_path, load_server_config

    try:
        return load_server_config(config_path(server_dir))
    except ConfigurationError as e:
        print(f"Invalid server configuration: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run_server(host: str, port: int, log_level: str = "INFO", token: str | None = None) -> None:
    import gc

    import uvicorn

    from dstack.server import heap
    from dstack.server.app import asgi_entry, create_app

    if token:
        os.environ["DSTACK_SERVER_ADMIN_TOKEN"] = token
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per agent call is noise
    settings = load_settings(host=host, port=port)
    server_config = _server_config(settings.server_dir)
    url = f"http://{host}:{port}"

    def on_ready(result: BootstrapResult) -> None:
        _announce(url, result)
        heap.freeze_now_and_later()

    app = create_app(settings, on_ready=on_ready, server_config=server_config)
    # What is loaded now (modules, classes, the app) lives as long as the process: no
    # collection needs to scan it again. The CLI turned the collector off while it loaded.
    gc.freeze()
    gc.enable()
    uvicorn.run(
        asgi_entry(app), host=host, port=port, log_level=log_level.lower(), access_log=False
    )
