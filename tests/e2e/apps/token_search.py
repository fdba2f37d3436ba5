"""Run inside a job: look for a token the job must not be able to read.

argv: SHA-256 of the secret token, SHA-256 of a control token (the job's own env holds it, so
the search must find it: proof that it looks where it should), then directories to walk.
Candidates are delimited runs of 43 url-safe characters (`secrets.token_urlsafe(32)`); only
their hashes are compared, so the job never learns the token. Prints `FOUND secret|control
PATH` per hit and `searched N` at the end."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time

CANDIDATE = re.compile(rb"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
SKIP_DIRS = {".git", ".venv", "node_modules", "site-packages", "__pycache__"}
MAX_FILE = 4 * 1024 * 1024
DEADLINE = time.monotonic() + 150


def scan(path: str, wanted: dict[str, str]) -> None:
    try:
        if os.path.getsize(path) > MAX_FILE:
            return
        with open(path, "rb") as f:
            data = f.read(MAX_FILE)
    except OSError:
        return
    for match in CANDIDATE.finditer(data):
        label = wanted.get(hashlib.sha256(match.group(0)).hexdigest())
        if label:
            print(f"FOUND {label} {path}", flush=True)


def main() -> int:
    secret, control, *roots = sys.argv[1:]
    wanted = {secret: "secret", control: "control"}
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for name in ("environ", "cmdline"):
                scan(f"/proc/{pid}/{name}", wanted)
                count += 1
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            if time.monotonic() > DEADLINE:
                print("TIMEOUT", flush=True)
                return 1
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path) and os.path.isfile(path):
                    scan(path, wanted)
                    count += 1
    print(f"searched {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
