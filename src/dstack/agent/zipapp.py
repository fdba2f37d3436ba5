"""Pack the agent into one executable zipapp, to copy onto a host over SSH.

Usage: python -m dstack.agent.zipapp OUT.pyz   then on the host:  python3 OUT.pyz --home DIR
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent

# The real dstack/__init__.py belongs to the full package; the zipapp carries only the
# agent, so it gets an empty package marker of its own.
PACKAGE_INIT = '"""dstack (agent-only zipapp)."""\n'
MAIN = "import sys\n\nfrom dstack.agent.main import main\n\nsys.exit(main())\n"


def build(target: Path) -> Path:
    """Write the zipapp to `target`; only the agent's own modules go in."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = root / "dstack" / "agent"
        package.mkdir(parents=True)
        (root / "dstack" / "__init__.py").write_text(PACKAGE_INIT)
        for source in sorted(AGENT_DIR.glob("*.py")):
            shutil.copyfile(source, package / source.name)
        (root / "__main__.py").write_text(MAIN)
        zipapp.create_archive(
            root, target=str(target), interpreter="/usr/bin/env python3", compressed=True
        )
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dstack.agent.zipapp OUT.pyz", file=sys.stderr)
        return 2
    print(build(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
