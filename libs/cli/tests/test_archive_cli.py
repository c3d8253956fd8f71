"""`passerelle archive …`: every realistic variant and every hostile case through the CLI.

Most runs call the command's entry point in this process (fast, same code path,
output captured by pytest); a few run the installed `passerelle` console script
as a real subprocess to check exit status 2, a single stderr line and no traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from passerelle_cli.main import app
from passerelle_xarchive import MESSAGES
from tests.support.archivegen import (
    ArchiveSpec,
    HostileCase,
    hostile_corpus,
    hostile_spec_variants,
    write_archive,
)

VARIANTS = hostile_spec_variants()


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


def invoke(capsys: pytest.CaptureFixture[str], args: list[str]) -> Result:
    """Run `passerelle ARGS` in this process, as the console script would."""
    capsys.readouterr()  # drop anything printed before
    try:
        code = app(args)
    except SystemExit as exit_:  # argparse refuses bad usage this way
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


_OPTION = {
    "max_archive_bytes": "--max-archive-bytes",
    "max_inflated_bytes": "--max-inflated-bytes",
    "max_compression_ratio": "--max-ratio",
    "max_members": "--max-members",
    "max_edges": "--max-edges",
}


def _console_script() -> str:
    local = Path(sys.executable).parent / "passerelle"
    found = str(local) if local.exists() else shutil.which("passerelle")
    assert found, "the passerelle console script is not installed"
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HostileCase]:
    return {c.name: c for c in hostile_corpus(tmp_path_factory.mktemp("hostile-cli"))}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants-cli")
    paths = {}
    for name, spec in VARIANTS:
        paths[name] = root / f"{name}.zip"
        write_archive(paths[name], spec)
    return paths


def _limit_args(case: HostileCase) -> list[str]:
    args: list[str] = []
    for key, value in case.limits.items():
        args += [_OPTION[key], str(value)]
    return args


@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
def test_inspect_json(
    name: str, spec: ArchiveSpec, archives: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, ["archive", "inspect", str(archives[name]), "--json"])
    assert result.exit_code == 0, result.output
    following, followers = spec.expected()
    assert json.loads(result.stdout) == {
        "account": {"id": str(spec.account_id), "username": spec.username},
        "following": len(following),
        "followers": len(followers),
    }


@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
def test_edges_lines(
    name: str, spec: ArchiveSpec, archives: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, ["archive", "edges", str(archives[name])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    following, followers = spec.expected()
    expected = [f"following\t{i}" for i in sorted(following)]
    expected += [f"follower\t{i}" for i in sorted(followers)]
    assert lines == expected


def test_inspect_human_summary(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, ["archive", "inspect", str(archives["duplicates"])])
    assert result.exit_code == 0, result.output
    spec = dict(VARIANTS)["duplicates"]
    assert f"@{spec.username}" in result.stdout
    assert str(spec.account_id) in result.stdout
    assert "2,500" in result.stdout  # followers, after dedup
    assert "Duplicate entries ignored" in result.stdout
    assert "example.org" not in result.stdout


def _hostile_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [c.name for c in hostile_corpus(d)]


@pytest.mark.parametrize("name", _hostile_names())
@pytest.mark.parametrize("command", ["inspect", "edges"])
def test_hostile_case_exit_2_one_line(
    name: str, command: str, corpus: dict[str, HostileCase], capsys: pytest.CaptureFixture[str]
) -> None:
    case = corpus[name]
    result = invoke(capsys, ["archive", command, str(case.path), *_limit_args(case)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    # the message is the code's template with its parameters filled in
    assert _matches(MESSAGES[case.code], lines[0]), (case.code, lines[0])


def _matches(template: str, line: str) -> bool:
    pattern = re.escape(template)
    pattern = re.sub(r"%\\\((\w+)\\\)s", ".+", pattern)
    return re.fullmatch(pattern, line) is not None


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(capsys, ["archive", "inspect"]).exit_code == 2
    result = invoke(capsys, ["archive", "inspect", str(tmp_path / "missing.zip")])
    assert result.exit_code == 2
    assert result.stderr.strip() == MESSAGES["unreadable"]


# -- the real console script -------------------------------------------------------------


def test_subprocess_good_archive(archives: dict[str, Path]) -> None:
    spec = dict(VARIANTS)["zip64"]
    done = subprocess.run(
        [_console_script(), "archive", "inspect", str(archives["zip64"]), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["followers"] == len(spec.expected()[1])


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("text.zip", "inspect"),
        ("truncated-half.zip", "inspect"),
        ("encrypted-flag.zip", "edges"),
        ("traversal.zip", "inspect"),
        ("id-float-in-big-file.zip", "edges"),
        ("bomb-ratio.zip", "inspect"),
        ("bomb-declared-size.zip", "inspect"),
    ],
)
def test_subprocess_bad_archive_exit_2_single_stderr_line(
    name: str, command: str, corpus: dict[str, HostileCase]
) -> None:
    case = corpus[name]
    done = subprocess.run(
        [_console_script(), "archive", command, str(case.path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert _matches(MESSAGES[case.code], done.stderr.rstrip("\n"))


def test_subprocess_missing_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [_console_script(), "archive", "inspect", str(tmp_path / "nope.zip"), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == MESSAGES["unreadable"] + "\n"


def test_subprocess_edges_into_a_closed_pipe(tmp_path: Path) -> None:
    """`passerelle archive edges x.zip | head -1` stops quietly, without a traceback."""
    path = tmp_path / "big.zip"
    write_archive(path, ArchiveSpec(followers=60_000, following=10))  # ~1.5 MB of lines
    proc = subprocess.Popen(
        [_console_script(), "archive", "edges", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert first.startswith(b"following\t")
    assert b"Traceback" not in err
    assert proc.returncode == 1  # stopped early: the output is incomplete


def test_groups_without_a_command_show_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    top = invoke(capsys, [])
    assert top.exit_code == 2
    assert "archive" in top.stdout
    assert "deadletters" in top.stdout
    group = invoke(capsys, ["archive"])
    assert group.exit_code == 2
    assert "inspect" in group.stdout
    assert "edges" in group.stdout


def test_start_up_imports_nothing_heavy() -> None:
    """The command tree loads with the standard library only: the reader (numpy), rich,
    nats and pydantic are imported when a command that needs them runs."""
    probe = (
        "import sys, passerelle_cli.main as m; m.build_parser(); "
        "print(sorted(n for n in ('numpy', 'rich', 'nats', 'pydantic', 'typer', 'click', "
        "'passerelle_xarchive', 'asyncio') if n in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
