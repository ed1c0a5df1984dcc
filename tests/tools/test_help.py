"""Every command-line tool prints its --help at once: nothing heavy (torch, the engine) is
imported before the arguments are parsed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))
# (tool, arguments, text the help shows): every tool's --help, and the help of each tool's modes.
CASES = [(tool, ["--help"], "usage") for tool in TOOLS] + [
    ("evaluate.py", ["CONFIG.yaml", "--mode", "everything", "-h"], "--iou-grid"),
]

# Runs the tool's __main__ with the given arguments in one interpreter, then reports what they imported.
PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
else:
    code = 0
heavy = sorted(m for m in ("torch", "mlflow", "samft.engine.trainer", "samft.data") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "EXIT=" + str(code))
"""


@pytest.mark.parametrize("tool, args, shows", CASES, ids=[" ".join([c[0], *c[1]]) for c in CASES])
def test_help_imports_nothing_heavy(tool: str, args: list[str], shows: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "tools" / tool), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() and shows in done.stdout
    assert done.stdout.rstrip().endswith("HEAVY= EXIT=0"), done.stdout[-500:]
