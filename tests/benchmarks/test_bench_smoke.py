"""The ingest benchmark runs end to end at a small size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_ingest_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_ingest",
            "--followers",
            "20000",
            "--following",
            "300",
            "--runs",
            "1",
            "--cache-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("bench", "followers", "seconds", "floor_seconds", "ratio", "peak_rss_mb"):
        assert key in result, key
    assert result["bench"] == "ingest"
    assert result["followers"] == 20000
    assert result["seconds"] > 0
    assert result["floor_seconds"] > 0
    assert result["peak_rss_mb"] > 0
    assert "targets:" in done.stdout
    assert any(p.suffix == ".zip" for p in tmp_path.iterdir())  # cached for the next run
    # the CLI ran from cached bytecode, kept in the cache directory
    assert result["bytecode_cache"] is True
    assert any((tmp_path / "pycache").rglob("*.pyc"))
