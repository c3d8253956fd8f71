"""The matching benchmark runs end to end at a small size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = (
    "bench",
    "edges",
    "load_seconds",
    "copy_floor_seconds",
    "match_seconds",
    "newcomer_p50_ms",
    "newcomer_p99_ms",
    "peak_rss_mb",
    "matches",
)


def test_bench_matching_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_matching",
            "--edges",
            "200000",
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
    assert result["bench"] == "matching"
    assert 150_000 <= result["edges"] <= 200_000
    assert result["matches"] > 0
    assert result["newcomer_requests_published"] > 0
    assert "targets (load average" in done.stdout
    assert "measured/target" in done.stdout
    assert set(result["target_ratios"]) == {
        "load / COPY floor (wall)",
        "full match (s)",
        "newcomer p99 (ms)",
        "peak RSS (MiB)",
    }
    assert result["edges_indexed"] == result["edges"]
    # The match table's four indexes (each at least its metapage and a leaf) were
    # read into the buffer cache before the newcomers.
    assert result["match_index_pages_warmed"] >= 8
