"""DESIGN.md's layering table, enforced on the source: which `dstack.*` modules each folder may
import. Every `import` counts, at module level or inside a function, absolute or relative. A
failure prints `module -> imported` for each violation so it says what to fix."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from dstack.models.common import BACKEND_IDS

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "dstack"


@dataclass(frozen=True)
class Edge:
    module: str
    imported: str
    lineno: int
    lazy: bool  # inside a function: imported only when that function runs

    def __str__(self) -> str:
        lazy = " (lazy)" if self.lazy else ""
        return f"{self.module} -> {self.imported}{lazy}  [line {self.lineno}]"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / "dstack").rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[Edge]:
    """Every `dstack.*` module that `source` imports. `from pkg import name` counts as
    `pkg.name` when that is a module, else as `pkg`."""
    tree = ast.parse(source)
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "dstack" or alias.name.startswith("dstack."):
                        edges.append(Edge(module, alias.name, child.lineno, lazy))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = _resolve_relative(module, is_package, child.level, child.module)
                else:
                    base = child.module or ""
                if base != "dstack" and not base.startswith("dstack."):
                    continue
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in known else base
                    edges.append(Edge(module, target, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return edges


def all_edges() -> list[Edge]:
    mods = all_modules()
    known = set(mods)
    out: list[Edge] = []
    for name, path in mods.items():
        out += imports_of(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)
    return out


EDGES = all_edges()

# -- the rules --------------------------------------------------------------------------------

LEAVES = ("dstack.errors", "dstack.version")

# folder -> what its modules may import (a prefix allows the module and everything under it)
ALLOWED: dict[str, tuple[str, ...]] = {
    "dstack.errors": (),
    "dstack.version": (),
    "dstack.models": (*LEAVES, "dstack.models"),
    "dstack.api": (*LEAVES, "dstack.api", "dstack.models", "dstack.client_config"),
    "dstack.cli": (*LEAVES, "dstack.cli", "dstack.api", "dstack.models", "dstack.client_config"),
    "dstack.server.db": ("dstack.server.db", "dstack.models"),
    "dstack.server.scheduler": ("dstack.server.scheduler", "dstack.models"),
    "dstack.server.services": (
        *LEAVES,
        "dstack.server.services",
        "dstack.server.db",
        "dstack.server.scheduler",
        "dstack.models",
        "dstack.client_config",
        # Settings is a leaf (it imports nothing of ours); the context services share holds it.
        "dstack.server.settings",
        # The compute interface (records and capabilities), never a backend's implementation.
        "dstack.server.backends.base",
        # Which backends each project has (it imports only the compute interface).
        "dstack.server.backends.registry",
    ),
    # The access table and its pure decisions (imports nothing of ours): the API's gate in
    # routers and the service proxy apply the same rules.
    "dstack.server.authz": (),
    "dstack.server.routers": (
        *LEAVES,
        "dstack.server.authz",
        "dstack.server.routers",
        "dstack.server.services",
        "dstack.models",
        "dstack.server.db.tables",  # type hints of the dependencies (t.User, t.Project)
    ),
    "dstack.server.reconcilers": (
        *LEAVES,
        "dstack.server.reconcilers",
        "dstack.server.services",
        "dstack.server.backends",
        "dstack.server.agent_client",
        "dstack.server.db",
        "dstack.server.scheduler",
        "dstack.models",
    ),
    "dstack.server.backends": (
        *LEAVES,
        "dstack.server.backends",
        "dstack.models",
        "dstack.agent.hostinfo",  # the local backend describes this machine
        "dstack.server.local_agent",  # ... and starts the agent on it
        "dstack.agent.zipapp",  # the SSH backend ships the agent to hosts as one zipapp
        "dstack.agent.util",  # pid checks for the local agent
        "dstack.server.settings",  # create_backends reads which backends are on
    ),
    "dstack.server.proxy": (
        *LEAVES,
        "dstack.server.authz",
        "dstack.server.proxy",
        "dstack.server.db",
        "dstack.models",
    ),
    "dstack.agent": ("dstack.agent",),
}

# Allowed only inside a function, so that importing the folder does not import them.
LAZY_ONLY: dict[str, tuple[str, ...]] = {
    "dstack.cli": ("dstack.server.main",),  # `dstack server`
}

# Imports the current code makes that DESIGN.md's arrows do not allow; each has an xfail test
# below naming it, so fixing it turns that test into an XPASS (and this entry must go).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if _under(module, layer)]
    return max(matches, key=len) if matches else None


def is_allowed(edge: Edge) -> bool:
    layer = layer_of(edge.module)
    if layer is None:
        return True
    if any(_under(edge.imported, p) for p in ALLOWED[layer]):
        return True
    return edge.lazy and any(_under(edge.imported, p) for p in LAZY_ONLY.get(layer, ()))


def violations(layer: str, edges: list[Edge] = EDGES, *, include_known: bool = False) -> list[str]:
    return [
        str(e)
        for e in edges
        if layer_of(e.module) == layer
        and not is_allowed(e)
        and (include_known or (e.module, e.imported) not in KNOWN_VIOLATIONS)
    ]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports(layer: str) -> None:
    bad = violations(layer)
    assert not bad, f"{layer} imports outside DESIGN.md's table:\n" + "\n".join(bad)


def test_known_violations_still_exist() -> None:
    """An entry of KNOWN_VIOLATIONS that the code no longer has must be removed."""
    present = {(e.module, e.imported) for e in EDGES}
    assert present >= KNOWN_VIOLATIONS, KNOWN_VIOLATIONS - present


def test_cli_imports_the_server_only_lazily() -> None:
    server = [
        e
        for e in EDGES
        if layer_of(e.module) == "dstack.cli" and _under(e.imported, "dstack.server")
    ]
    assert server, "expected `dstack server` to import dstack.server.main"
    assert all(e.lazy and e.imported == "dstack.server.main" for e in server), [
        str(e) for e in server
    ]


# -- the scanner itself -----------------------------------------------------------------------


def test_scanner_sees_the_whole_package() -> None:
    mods = all_modules()
    for name in (
        "dstack.models.runs",
        "dstack.cli.main",
        "dstack.agent.server",
        "dstack.server.reconcilers.jobs",
        "dstack.server.scheduler.placement",
    ):
        assert name in mods
    layers = {layer_of(e.module) for e in EDGES}
    assert {"dstack.models", "dstack.cli", "dstack.server.services", "dstack.agent"} <= layers


def test_scanner_finds_every_kind_of_import() -> None:
    known = {"dstack.server.db.tables", "dstack.server.scheduler", "dstack.models.runs"}
    source = textwrap.dedent(
        """
        import os
        import dstack.models.runs
        from dstack.models import runs
        from dstack.models.runs import Run
        from . import tables
        from .. import scheduler
        from ..services.pool import load_pool
        import dstack

        def f():
            from dstack.server.main import run_server

        class C:
            async def g(self):
                import dstack.server.settings
        """
    )
    edges = imports_of("dstack.server.db.session", source, False, known)
    assert [(e.imported, e.lazy) for e in edges] == [
        ("dstack.models.runs", False),
        ("dstack.models.runs", False),
        ("dstack.models.runs", False),
        ("dstack.server.db.tables", False),
        ("dstack.server.scheduler", False),
        ("dstack.server.services.pool", False),
        ("dstack", False),
        ("dstack.server.main", True),
        ("dstack.server.settings", True),
    ]


def test_relative_import_from_a_package_init() -> None:
    edges = imports_of(
        "dstack.server.db", "from . import tables", True, {"dstack.server.db.tables"}
    )
    assert [e.imported for e in edges] == ["dstack.server.db.tables"]


@pytest.mark.parametrize(
    ("module", "imported", "lazy", "allowed"),
    [
        ("dstack.models.runs", "dstack.errors", False, True),
        ("dstack.models.runs", "dstack.server.db.tables", False, False),
        ("dstack.models.runs", "dstack.client_config", False, False),
        ("dstack.api.client", "dstack.client_config", False, True),
        ("dstack.api.client", "dstack.cli.common", False, False),
        ("dstack.cli.commands.server", "dstack.server.main", True, True),
        ("dstack.cli.commands.server", "dstack.server.main", False, False),
        ("dstack.cli.commands.ps", "dstack.server.services.runs", True, False),
        ("dstack.server.db.tables", "dstack.server.services.pool", False, False),
        ("dstack.server.scheduler.placement", "dstack.server.db", False, False),
        ("dstack.server.services.pool", "dstack.server.scheduler.placement", False, True),
        ("dstack.server.services.runs", "dstack.server.agent_client", False, False),
        ("dstack.server.services.runs", "dstack.server.reconcilers.jobs", True, False),
        ("dstack.server.routers.runs", "dstack.server.db.tables", False, True),
        ("dstack.server.routers.runs", "dstack.server.db.session", False, False),
        ("dstack.server.routers.runs", "dstack.server.backends.local", False, False),
        ("dstack.server.reconcilers.job_worker", "dstack.server.agent_client", False, True),
        ("dstack.server.reconcilers.job_worker", "dstack.server.routers.runs", False, False),
        ("dstack.server.backends.local", "dstack.agent.hostinfo", False, True),
        ("dstack.server.backends.local", "dstack.agent.jobs", False, False),
        ("dstack.server.backends.local", "dstack.server.db.tables", False, False),
        ("dstack.server.services.pool", "dstack.server.backends.base", False, True),
        ("dstack.server.services.pool", "dstack.server.backends.local", False, False),
        ("dstack.server.services.pool", "dstack.server.backends.ssh.backend", True, False),
        ("dstack.agent.server", "dstack.agent.jobs", False, True),
        ("dstack.agent.server", "dstack.models.runs", True, False),
        ("dstack.agent.server", "dstack", False, False),
        ("dstack.errors", "dstack.models", False, False),
        ("dstack.server.app", "dstack.server.routers.runs", False, True),  # the wiring
    ],
)
def test_rules(module: str, imported: str, lazy: bool, allowed: bool) -> None:
    assert is_allowed(Edge(module, imported, 1, lazy)) is allowed


# -- the CLI's cold start ---------------------------------------------------------------------

HEAVY = ("pydantic", "httpx", "rich", "yaml", "sqlalchemy", "fastapi")

PROBE = textwrap.dedent(
    """
    import sys
    sys.argv = ["dstack", "--version"]
    from dstack.cli.main import main
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    # A None entry is a placeholder that blocks an import (cli/main.py's httpx._main), not a
    # module that was loaded.
    loaded = [m for m, mod in sys.modules.items() if mod is not None]
    heavy = sorted(m.split(".")[0] for m in loaded if m.split(".")[0] in {heavy!r})
    print("HEAVY=" + ",".join(sorted(set(heavy))))
    print("DSTACK=" + ",".join(sorted(m for m in sys.modules if m.startswith("dstack"))))
    sys.exit(code or 0)
    """
).format(heavy=set(HEAVY))


def test_dstack_version_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=SRC.parent
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    from dstack.version import __version__

    assert lines[0] == __version__
    heavy = next(x for x in lines if x.startswith("HEAVY="))
    assert heavy == "HEAVY=", f"`dstack --version` imported {heavy[6:]}"
    dstack_mods = next(x for x in lines if x.startswith("DSTACK="))[7:].split(",")
    assert not [m for m in dstack_mods if m.startswith(("dstack.server", "dstack.api"))]


# -- no backend is named outside server/backends/ ---------------------------------------------

SERVER = "dstack.server"
BACKENDS = "dstack.server.backends"
# The backend types of the configuration language, plus the two built-in ones.
BACKEND_NAMES = frozenset({*BACKEND_IDS, "local", "ssh"})


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _backend_literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and node.value in BACKEND_NAMES:
        return node.value
    return None


def _about_backends(node: ast.AST) -> bool:
    return "backend" in _name(node).lower()


def backend_names_in(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place the code decides something by a backend's name: compared
    with a `backend` value, looked up in a `backends` mapping, passed as `backend=`, or listed
    under a `backends` key. Capabilities and the instance row's own type are the way instead."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for lit in filter(None, map(_backend_literal, sides)):
                if any(_about_backends(n) for n in sides):
                    found.append((node.lineno, f"compares with {lit!r}"))
        elif isinstance(node, ast.Subscript) and _about_backends(node.value):
            lit = _backend_literal(node.slice)
            if lit:
                found.append((node.lineno, f"looks up {lit!r}"))
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and _about_backends(node.func.value):
                for lit in filter(None, map(_backend_literal, node.args)):
                    found.append((node.lineno, f"looks up {lit!r}"))
            for kw in node.keywords:
                if kw.arg and "backend" in kw.arg:
                    values = (
                        kw.value.elts if isinstance(kw.value, (ast.List, ast.Tuple)) else [kw.value]
                    )
                    for lit in filter(None, map(_backend_literal, values)):
                        found.append((node.lineno, f"passes {kw.arg}={lit!r}"))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and "backend" in str(key.value):
                    values = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
                    for lit in filter(None, map(_backend_literal, values)):
                        found.append((node.lineno, f"lists {lit!r} under {key.value!r}"))
    return found


def backend_name_violations(modules: dict[str, Path] | None = None) -> list[str]:
    modules = modules if modules is not None else all_modules()
    bad = []
    for name, path in modules.items():
        if not _under(name, SERVER) or _under(name, BACKENDS):
            continue
        for line, what in backend_names_in(path.read_text()):
            bad.append(f"{name} [line {line}]: {what}")
    for e in EDGES:
        outside = _under(e.module, SERVER) and not _under(e.module, BACKENDS)
        interface = (BACKENDS, f"{BACKENDS}.base", f"{BACKENDS}.registry")
        impl = _under(e.imported, BACKENDS) and e.imported not in interface
        if outside and impl:
            bad.append(f"{e.module} [line {e.lineno}]: imports the implementation {e.imported}")
    return bad


def test_no_backend_is_named_outside_server_backends() -> None:
    bad = backend_name_violations()
    assert not bad, "backend names outside server/backends/ (use capabilities):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "snippet",
    [
        'if inst.backend == "ssh": pass',
        'x = "local" != offer.backend',
        'b = ctx.backends["ssh"]',
        'b = ctx.backends.get("local")',
        'select(t.Instance).where(t.Instance.backend == "ssh")',
        't.Instance(backend="ssh")',
        'spec = {"backends": ["local"]}',
        'ok = "aws" in self.backends',
    ],
)
def test_backend_name_check_catches(snippet: str) -> None:
    assert backend_names_in(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        'LOCAL_FLEET = "local"',  # a fleet's name, not a backend's
        'key = conf.get("ssh_config")',
        "if backend.capabilities.shared_host: pass",
        "b = ctx.backends.get(inst.backend)",
        'region = "local"',
    ],
)
def test_backend_name_check_lets_through(snippet: str) -> None:
    assert not backend_names_in(snippet), snippet
