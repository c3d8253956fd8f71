"""The services' Dockerfiles, without a Docker engine: hadolint, their structure, and a
replay of their build stage (the same COPY and `uv sync` steps in a scratch
directory) that proves each image gets its own service and only the workspace
packages it depends on, and that the service runs from that venv alone (the final
stage's environment, a real nats-server) until ready."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.ops.tools import ROOT, require, run
from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.support.services import STARTUP_SECONDS

SERVICES = {
    "ingest": "passerelle-ingest",
    "matching": "passerelle-matching",
    "bluesky_sender": "passerelle-bluesky-sender",
    "mastodon_sender": "passerelle-mastodon-sender",
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """A Dockerfile's stages and instructions (continuations joined, comments dropped)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def workspace() -> dict[str, tuple[Path, list[str]]]:
    """Workspace package name -> (directory, names of its workspace dependencies)."""
    members = {}
    for pyproject in [*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]:
        project = tomllib.loads(pyproject.read_text())["project"]
        deps = [
            re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] for d in project.get("dependencies", [])
        ]
        members[project["name"]] = (pyproject.parent, deps)
    return {
        name: (path, [d for d in deps if d in members]) for name, (path, deps) in members.items()
    }


def closure(package: str) -> set[str]:
    members = workspace()
    seen, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(members[name][1])
    return seen


def dockerignore_excludes(relative: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern matching
    a parent directory matches the path."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = (
            re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint(service: str) -> None:
    run([require("hadolint"), str(ROOT / "services" / service / "Dockerfile")])


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_structure(service: str) -> None:
    package = SERVICES[service]
    stages = parse(ROOT / "services" / service / "Dockerfile")
    build, final = stages[-2], stages[-1]
    assert len(stages) >= 2, "multi-stage"
    assert build.name == "build"
    assert final.name is None
    assert build.base == final.base, "the venv is built on the interpreter it runs on"
    # Final image: non-root, no build tools, no source tree, no HEALTHCHECK.
    assert final.all("USER") == ["10001:10001"]
    assert not [kw for stage in stages for kw, _ in stage.instructions if kw == "HEALTHCHECK"]
    assert final.all("COPY") == ["--from=build /app/.venv /app/.venv"]
    for command in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|pip|uv|gcc|make)\b", command), command
    scripts = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    assert final.all("ENTRYPOINT") == [f'["{package}"]']
    assert package in scripts["project"]["scripts"]
    # Build stage: every member's pyproject (uv checks the lock), only its own sources.
    copies = [args.split() for args in build.all("COPY") if not args.startswith("--from")]
    sources = {src for *srcs, _ in copies for src in srcs}
    members = workspace()
    assert {f"{p.relative_to(ROOT)}/pyproject.toml" for p, _ in members.values()} <= sources
    wanted = {f"{members[name][0].relative_to(ROOT)}/src" for name in closure(package)}
    assert {s for s in sources if s.endswith("/src")} == wanted
    syncs = [c for c in build.all("RUN") if c.startswith("uv sync")]
    assert len(syncs) == 2
    for command in syncs:
        assert {"--locked", "--no-dev", "--package", package} <= set(command.split())
    assert "--no-install-workspace" in syncs[0]
    assert "--no-editable" in syncs[1]
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [
            str(f.relative_to(ROOT)) for f in (ROOT / source).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts
        ]  # fmt: skip
        assert files, source
        assert not [f for f in files if dockerignore_excludes(f)], f"{source}: .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    for path in ("tests/e2e/test_stack.py", ".venv/bin/python", "var/x", "docs/architecture.md",
                 "node_modules/x", "services/ingest/tests/test_x.py", ".git/HEAD",
                 "libs/platform/src/passerelle_platform/__pycache__/x.pyc"):  # fmt: skip
        assert dockerignore_excludes(path), path
    for path in ("uv.lock", "libs/platform/src/passerelle_platform/runtime.py",
                 "services/ingest/src/passerelle_ingest/templates/base.html"):  # fmt: skip
        assert not dockerignore_excludes(path), path


def _replay_build(service: str, context: Path) -> Path:
    """Run the build stage's COPY and `uv sync` steps in ``context``; return the venv."""
    stages = parse(ROOT / "services" / service / "Dockerfile")
    build = stages[-2]
    workdir = context / "src"
    venv = context / "app" / ".venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "hardlink",  # the cache is on the same disk; nothing writes
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_COMPILE_BYTECODE": "0",  # the image compiles; the replay saves the time
        "UV_PYTHON": str(Path(shutil.which("python3") or "python3")),
    }
    env.pop("VIRTUAL_ENV", None)
    for keyword, args in build.instructions:
        if keyword == "WORKDIR":
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY" and not args.startswith("--from"):
            *sources, destination = args.split()
            for source in sources:
                target = workdir / destination
                if destination.endswith("/") or destination == "./":
                    target = target / Path(source).name
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(ROOT / source, target)
        elif keyword == "RUN" and args.startswith("uv "):
            done = subprocess.run(
                shlex.split(args),
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return venv


def image_env(service: str) -> dict[str, str]:
    """The final stage's ENV (what the container starts with), ``$PATH`` left out."""
    env: dict[str, str] = {}
    for args in parse(ROOT / "services" / service / "Dockerfile")[-1].all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


@pytest.mark.e2e
@pytest.mark.parametrize("service", SERVICES)
def test_image_layout_runs_the_service(
    service: str, tmp_path: Path, nats_server: NatsServer
) -> None:
    """Each Dockerfile's build stage replayed; then its venv alone (no source tree, no
    workspace on the path) runs the service as the container would: the final stage's
    ENV, a data directory of its own, connected to a real nats-server, ready and
    serving /metrics. No Docker engine here, so this is as near to the image as it gets.
    """
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    venv = _replay_build(service, tmp_path / "build")
    site = next(venv.glob("lib/python3*/site-packages"))
    installed = {p.name.split("-")[0] for p in site.glob("passerelle_*.dist-info")}
    expected = {name.replace("-", "_") for name in closure(SERVICES[service])}
    assert installed == expected
    for pth in site.glob("*.pth"):
        assert "/src" not in pth.read_text(), f"{pth.name}: installed editable"

    # An invalid setting stops it at once with its one-line error (exit code 2).
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(venv / "bin" / SERVICES[service])],
        check=False,
        cwd=tmp_path,
        env={**bare, "PASSERELLE_REGION": "Not A Region"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("configuration error: PASSERELLE_REGION"), done.stderr

    env = image_env(service)
    assert env["PASSERELLE_DATA_DIR"] == "/var/lib/passerelle"
    port = free_port()
    data = tmp_path / "var-lib-passerelle"  # the image's /var/lib/passerelle
    data.mkdir()
    container_env = {
        **bare,
        **{k: v for k, v in env.items() if k != "PATH"},
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PASSERELLE_HTTP_HOST": "127.0.0.1",  # the image listens on 0.0.0.0
        "PASSERELLE_HTTP_PORT": str(port),
        "PASSERELLE_DATA_DIR": str(data),
        "PASSERELLE_NATS_URL": nats_server.url,
        "PASSERELLE_ENV": "dev",
    }
    workdir = tmp_path / "empty"
    workdir.mkdir()
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(
        [SERVICES[service]], cwd=workdir, env=container_env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready from the image's venv"
            time.sleep(0.2)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert f'passerelle_service_info{{region="local",service="{service}"' in metrics or (
            "passerelle_service_info{" in metrics and f'service="{service}"' in metrics
        )
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
    # A clean stop: uvicorn finishes its shutdown, then re-raises the SIGTERM it caught.
    assert code in (0, -signal.SIGTERM), (tmp_path / "service.log").read_text()[-3000:]
    assert "Application shutdown complete" in (tmp_path / "service.log").read_text()
    # Nothing was written outside the data directory and /tmp: the image's root
    # filesystem is read-only.
    assert not list(workdir.iterdir())
