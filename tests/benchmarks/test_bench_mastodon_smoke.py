"""The Mastodon benchmark runs end to end at a small size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = (
    "bench",
    "people",
    "simulated_hours",
    "speedup",
    "allowed_follows",
    "done_follows",
    "budget_ratio",
    "limit_violations",
    "duplicates",
    "follows_per_second",
    "cpu_ms_per_follow",
)

pytestmark = pytest.mark.e2e


def test_bench_mastodon_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_mastodon",
            "--people",
            "6",
            "--instances",
            "2",
            "--backlog",
            "450",
            "--extra-targets",
            "250",
            "--hours",
            "1",
            "--lead-hours",
            "1",
            "--work-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(KEYS) <= set(result)
    assert result["bench"] == "mastodon"
    assert result["people"] == 6
    assert result["limit_violations"] == 0
    assert result["duplicates"] == 0
    assert result["done_follows"] > 0
    assert 0 < result["budget_ratio"] <= 1.0
