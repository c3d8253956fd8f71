"""The Bluesky sender benchmark runs end to end at a small size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_bench_bluesky_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_bluesky",
            "--people",
            "3",
            "--backlog",
            "2000",
            "--targets",
            "2500",
            "--hours",
            "2",
            "--speedup",
            "400",
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
    for key in KEYS:
        assert key in result, key
    assert result["bench"] == "bluesky"
    assert result["people"] == 3
    assert result["allowed_follows"] == 3 * 2000  # two hourly windows allow 3,332 each
    assert result["limit_violations"] == 0
    assert result["duplicates"] == 0
    assert result["done_follows"] <= result["allowed_follows"]
    assert result["budget_ratio"] >= 0.9
    assert "targets:" in done.stdout
