"""`dstack server`: start the API server (the server itself lives in `dstack.server`)."""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--host", default=env("DSTACK_SERVER_HOST", "127.0.0.1"),
                        help="the address to bind (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=int(env("DSTACK_SERVER_PORT", "3000")),
                        help="the port to listen on (default 3000)")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("-l", "--log-level", default=env("DSTACK_SERVER_LOG_LEVEL", "INFO"),
                        help="log level (default INFO)")
    levels.add_argument("-d", "--debug", action="store_true", help="same as --log-level DEBUG")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="update the main project in ~/.dstack/config.yml without asking")
    parser.add_argument("-n", "--no", action="store_true",
                        help="do not update ~/.dstack/config.yml")
    parser.add_argument("--token", default=env("DSTACK_SERVER_ADMIN_TOKEN"),
                        help="the admin token (default: generated on first start)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import gc

    from dstack.cli.common import CLIError

    # The server's imports leave ~130k objects that live as long as the process; the cyclic
    # collector's full passes over them while they load were ~15% of the cold start.
    # `run_server` freezes them out of its passes and turns it back on before serving.
    gc.disable()
    # FastAPI imports pydantic.v1 (~15 ms) at each route's registration only to refuse v1
    # models, which nothing here has; a None entry makes that import fail, and FastAPI then
    # skips the check (as cli/main.py does for httpx's command-line client).
    sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
    try:
        from dstack.server.main import run_server
    except ImportError as e:
        raise CLIError(
            f"The server is not available ({e}). Install it with"
            ' `pip install "dstack-cp[server]"`'
        ) from e
    level = "DEBUG" if args.debug else args.log_level.upper()
    run_server(host=args.host, port=args.port, log_level=level, token=args.token)
    return 0
