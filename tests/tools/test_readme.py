"""The README's commands run as written, in order, in a fresh folder: a README that drifts from the
code fails here.

Every fenced ``bash`` block runs command by command (a block's ``VAR=...`` lines are kept for its
later commands) in a temporary folder holding ``configs/``, ``tools/`` and ``benchmarks/`` of this clone, with
``.venv/bin/python`` (or ``python``) replaced by the interpreter running this test, which is
``.venv/bin/python`` under ``make test``. Only sizes shrink: training and evaluation get the tiny
overrides of conftest.py appended, the demo data has 8 images, distance maps use one process.
``make demo`` runs the Makefile's own demo recipe.
``annotations/`` and ``train2017/``/``val2017/`` hold a small COCO dataset made here, standing in for
the user's. ``console`` blocks are transcripts: each ``$`` command, run exactly as written (nothing appended),
must print the shown lines (``...`` matches anything). ``python`` blocks run as scripts.

Skipped, and said so in the test's output: what needs GPUs (torchrun with 8 processes per node),
Docker, or Meta's checkpoints (whose train commands still have their config and overrides loaded),
and ``make test`` (this suite). ``mlflow ui`` is a server that takes 50-75 s to start on 2 busy cores:
it is not started, but the store its ``--backend-store-uri`` names must hold the runs written so far.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
PYTHON = re.compile(r"^(?:\.venv/bin/)?python3?(?=\s)")
# Released checkpoints of the SAM family: Meta's SAM, MobileSAM's, HQ-SAM's, SAM 2.1's.
META_CHECKPOINT = re.compile(
    r"model\.checkpoint=\S*(sam_vit_[blh]_\w+\.pth|mobile_sam\.pt|sam_hq_vit_[blh]\.pth|sam2\.1_hiera_\w+\.pt)")
SKIPS = [  # (pattern of a command, why it cannot run here)
    (re.compile(r"^make test\b"), "it is this test suite"),
    (re.compile(r"^(\.venv/bin/)?torchrun\b"), "needs GPUs (8 processes per node)"),
    (re.compile(r"^(docker|export SAMFT_DATA)\b"), "needs Docker"),
    (META_CHECKPOINT, "needs a released checkpoint (its config and overrides were loaded)"),
]


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, body, line number) of every fenced block, in README order."""
    text = README.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def commands(body: str) -> list[str]:
    """Logical command lines: continuations joined, trailing comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [c for c in (strip_comment(line).strip() for line in joined.splitlines()) if c]


def strip_comment(line: str) -> str:
    """``line`` without a ``# comment`` that is outside quotes and follows whitespace (or starts it)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def makefile_demo() -> list[str]:
    """The commands of the Makefile's ``demo`` target, as README users run them."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    return [line.strip().replace("$(PY)", ".venv/bin/python").replace("$(DEMO_DATA)", "data/demo")
            for line in recipe.splitlines()]


def write_coco(root: Path, split: str, images: int, seed: int) -> None:
    """A small COCO instances file with polygon objects on noise images (the user's data here)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(images):
        pixels = rng.integers(0, 80, (120, 160, 3), dtype=np.uint8)
        for _ in range(3):
            x, y, w, h = int(rng.integers(5, 90)), int(rng.integers(5, 60)), 40, 30
            pixels[y:y + h, x:x + w] = rng.integers(120, 255, 3)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                                        "iscrowd": 0, "area": w * h, "bbox": [x, y, w, h],
                                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        Image.fromarray(pixels).save(root / split / f"{i + 1:012d}.jpg")
        coco["images"].append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 160, "height": 120})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


class ReadmeRun:
    """Runs README commands in one folder and records what ran and what was skipped."""

    def __init__(self, cwd: Path, env: dict[str, str], tiny_train: list[str], tiny_eval: list[str]) -> None:
        self.cwd, self.env = cwd, env
        self.tiny = {"tools/train.py": tiny_train, "tools/evaluate.py": tiny_eval,
                     "tools/make_demo_data.py": ["--images", "8"],
                     "tools/precompute_distance_maps.py": ["--workers", "1"]}
        self.ran: list[str] = []
        self.seconds: list[float] = []
        self.skipped: list[tuple[str, str]] = []

    def skip_reason(self, command: str) -> str | None:
        for pattern, reason in SKIPS:
            if pattern.search(command):
                return reason
        return None

    def runnable(self, command: str, shrink: bool = True) -> str:
        """``command`` with this interpreter for .venv/bin/python and (``shrink``) tiny step counts appended."""
        command = PYTHON.sub(shlex.quote(sys.executable), command)
        command = re.sub(r"^\.venv/bin/mlflow\b", f"{shlex.quote(sys.executable)} -m mlflow", command)
        for tool, extra in self.tiny.items() if shrink else ():
            if re.search(rf"\s{re.escape(tool)}\s", command):
                command += " " + " ".join(shlex.quote(o) for o in extra)
        return command

    def shell(self, script: str, where: str, timeout: int = 600) -> str:
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"README {where} failed (exit {done.returncode}):\n{script}\n{output[-4000:]}"
        return output

    def bash_block(self, body: str, line: int) -> None:
        assignments: list[str] = []
        for command in commands(body):
            if command == "make demo":
                for step in makefile_demo():
                    self.run_command(step, assignments, f"line {line} (make demo: {step})")
                continue
            self.run_command(command, assignments, f"line {line}")

    def run_command(self, command: str, assignments: list[str], where: str) -> None:
        reason = self.skip_reason(command)
        if reason:
            self.skipped.append((command, reason))
            if reason == SKIPS[-1][1] and " tools/train.py " in f" {command} ":
                self.check_config(command)
            return
        if re.match(r"^[A-Za-z_]\w*=", command):  # kept for the block's later commands
            assignments.append(command)
            return
        started = time.perf_counter()
        if re.search(r"(^|/)mlflow ui\b", command):
            self.check_ui_store(command, where)
        else:
            self.shell("\n".join([*assignments, self.runnable(command)]), where)
        self.ran.append(command)
        self.seconds.append(time.perf_counter() - started)
        print(f"{self.seconds[-1]:5.1f} s  {command}", flush=True)

    def check_config(self, command: str) -> None:
        """A skipped train command's config and overrides must still load."""
        from samft.config import load

        args = shlex.split(command)
        at = next(i for i, a in enumerate(args) if a.endswith("tools/train.py"))
        load(REPO / args[at + 1], args[at + 2:])

    def check_ui_store(self, command: str, where: str) -> None:
        """The store ``mlflow ui --backend-store-uri URI`` would show holds the runs written so far."""
        from mlflow.tracking import MlflowClient

        uri = shlex.split(command)[shlex.split(command).index("--backend-store-uri") + 1]
        assert uri.startswith("sqlite:///") and (self.cwd / uri.removeprefix("sqlite:///")).is_file(), \
            f"README {where}: {uri} is not the store the runs above wrote (a file in the project folder)"
        client = MlflowClient(uri.replace("sqlite:///", f"sqlite:///{self.cwd}/", 1))
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(experiments), f"README {where}: no run in {uri}"

    def transcript(self, body: str, line: int) -> None:
        """``$ command`` lines followed by the lines it must print (``...`` = anything)."""
        for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
            command, *expected = chunk.strip().splitlines()
            # A transcript shows what exactly this command prints: nothing is appended to it.
            done = subprocess.run(["bash", "-c", self.runnable(command, shrink=False)], cwd=self.cwd, env=self.env,
                                  capture_output=True, text=True, timeout=600)
            printed = (done.stdout + done.stderr).splitlines()
            for want in expected:
                pattern = ".*".join(re.escape(part) for part in want.split("..."))
                assert any(re.fullmatch(pattern, got) for got in printed), \
                    f"README line {line}: `{command}` should print\n{want}\nbut printed:\n" + "\n".join(printed)
            self.ran.append(command)
            self.seconds.append(0.0)


def test_readme_commands_run_as_written(tmp_path: Path, tool_env, tiny_train, tiny_eval) -> None:
    # A clone beside ../shared, as the README's real-data commands expect (CI lays shared/ there).
    clone = tmp_path / "samft"
    clone.mkdir()
    if (REPO.parent / "shared").is_dir():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    else:
        SKIPS.append((re.compile(r"\.\./shared/"), "needs ../shared beside the clone (CI has it)"))
    for folder in ("configs", "tools", "benchmarks"):
        (clone / folder).symlink_to(REPO / folder)
    for split, images, seed in (("train2017", 4, 0), ("val2017", 2, 1)):
        write_coco(clone, split, images, seed)
    run = ReadmeRun(clone, tool_env, tiny_train, tiny_eval)
    tmp_path = clone
    for language, body, line in readme_blocks():
        if language == "bash":
            run.bash_block(body, line)
        elif language == "console":
            run.transcript(body, line)
        elif language == "python":
            run.shell(f"{shlex.quote(sys.executable)} - <<'EOF'\n{body}EOF", f"line {line} (python)")
            run.ran.append(f"python block at line {line}")
            run.seconds.append(0.0)

    print("README commands run:", *(f"{s:5.1f} s  {c}" for c, s in zip(run.ran, run.seconds)), sep="\n  ")
    print("README commands skipped:", *(f"{c}  [{why}]" for c, why in run.skipped), sep="\n  ")
    assert {why for _, why in run.skipped} <= {why for _, why in SKIPS}
    assert len(run.ran) >= 15  # a README that lost its commands (or a parser that lost them) fails
    # What the README promises of those commands.
    runs = sorted(p.name for p in (tmp_path / "outputs").iterdir()
                  if (p / "config.yaml").is_file() and p.name.startswith("demo"))  # the real-data run logs nothing
    assert "demo-uncertainty" in runs and any(re.fullmatch(r"demo-\d{8}-\d{6}", r) for r in runs)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("samft-demo")
    assert sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id])) == runs
    assert (tmp_path / "outputs" / "compare" / "report.md").is_file()
    assert list((tmp_path / "data" / "mine" / "dist_maps").iterdir())
