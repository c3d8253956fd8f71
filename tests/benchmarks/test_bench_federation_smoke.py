"""The federation benchmark runs end to end at a small size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_bench_federation_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_federation",
            "--people",
            "150",
            "--edges",
            "20",
            "--newcomers",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "federation"
    assert result["newcomers"] == 5
    for key in ("propagation_p50_ms", "propagation_p99_ms", "bytes_per_person"):
        assert result[key] > 0, key
    assert result["propagation_p50_ms"] <= result["propagation_p99_ms"]
