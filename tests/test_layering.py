"""The pure layers (core/, wire/, model/) never import I/O frameworks or torch, even transitively.

Complements the ruff banned-api rule in p2prec/{core,wire,model}/ruff.toml, which sees only the
direct imports of each file. Each check runs in a fresh interpreter, so that what this test
process (pytest, other tests) already imported cannot hide or fake anything. New modules under
the pure packages are found with pkgutil and covered automatically.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PURE_PACKAGES = ("p2prec.core", "p2prec.wire", "p2prec.model", "p2prec.sim")
BANNED = ("asyncio", "zmq", "aiohttp", "torch", "structlog")

# Imports every module of the pure packages one by one and reports, for each, the banned
# top-level packages that appeared in sys.modules while importing it.
_CHECKER = """
import importlib, json, pkgutil, sys

banned, packages, extra = json.loads(sys.argv[1])

def loaded():
    return {name.partition(".")[0] for name in sys.modules} & set(banned)

report = {"preloaded": sorted(loaded()), "modules": [], "offenders": {}}
names = ["p2prec.core.versions", "p2prec.wire.messages", *extra]
for package in packages:
    names.append(package)
    module = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
for name in names:
    before = loaded()
    importlib.import_module(name)
    report["modules"].append(name)
    new = loaded() - before
    if new:
        report["offenders"][name] = sorted(new)
report["final"] = sorted(loaded())
print(json.dumps(report))
"""


def run_checker(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    args = json.dumps([BANNED, PURE_PACKAGES, extra])
    proc = subprocess.run(
        [sys.executable, "-c", _CHECKER, args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_pure_layers_import_no_io_framework_or_torch() -> None:
    report = run_checker()
    assert report["preloaded"] == [], "the bare interpreter already holds a banned module"
    assert report["offenders"] == {}, f"pure modules pulling banned imports: {report['offenders']}"
    assert report["final"] == []


def test_checker_covers_every_pure_module() -> None:
    report = run_checker()
    for package in PURE_PACKAGES:
        directory = ROOT.joinpath(*package.split("."))
        for path in directory.rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            assert name in report["modules"], name


def test_checker_catches_a_transitive_import() -> None:
    # json.decoder is harmless; asyncio.queues imports asyncio: both must be told apart.
    report = run_checker(extra=("json.decoder", "asyncio.queues"))
    assert "json.decoder" not in report["offenders"]
    assert report["offenders"]["asyncio.queues"] == ["asyncio"]
