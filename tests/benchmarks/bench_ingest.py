"""Benchmark: `passerelle archive inspect` against the floor of merely inflating the data.

Run: ``uv run python -m tests.benchmarks.bench_ingest [--followers N] [--following M]``

It generates (and caches) a realistic archive, then measures in the same run:

* the **floor**: inflating the same members (account, follower*, following*)
  with zlib and discarding the bytes, in this process;
* the **CLI**: wall time and peak RSS of the real ``passerelle archive inspect
  PATH --json`` console script, run as a subprocess (RSS from ``wait4``, through a
  small launcher so that this process's own memory is not charged to the CLI);
* for information, the library alone (``read_archive`` in this process).

The CLI runs with a bytecode cache kept in the cache directory, as an
installed program runs after its first start, even where
``PYTHONDONTWRITEBYTECODE`` is set (``--no-bytecode-cache`` to measure without).

Times are the best of ``--runs`` runs (the machine is shared; the best run is
the least disturbed one), RSS the highest. The last line printed is one JSON
object for tools; targets are printed above it with whether each is met.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.support.archivegen import ArchiveSpec, write_archive

TARGET_RATIO = 3.0
TARGET_RSS_MB = 200.0
TARGET_RSS_GROWTH = 1.20  # RSS at 10M followers vs 1M
BASELINE_FOLLOWERS = 1_000_000
GENERATOR_VERSION = "v1"
_MEMBER_RE = re.compile(r"(?:.*/)?data/(?:account|follower|following)(?:-part\d+)?\.js")


@dataclass
class CliRun:
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    output: dict[str, object]


def cache_dir(explicit: str | None) -> Path:
    """Where generated archives are kept between runs."""
    base = explicit or os.environ.get("PASSERELLE_BENCH_CACHE")
    path = Path(base) if base else Path(tempfile.gettempdir()) / "passerelle-bench-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def archive_for(followers: int, following: int, directory: Path) -> Path:
    """The cached archive for these sizes, generated (streaming) if absent."""
    path = directory / f"archive-{GENERATOR_VERSION}-{followers}-{following}.zip"
    if not path.exists():
        started = time.perf_counter()
        print(f"generating {path.name} ...", flush=True)
        partial = path.with_suffix(".partial")
        write_archive(partial, ArchiveSpec(followers=followers, following=following))
        partial.replace(path)
        print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def floor_seconds(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to inflate the members the reader needs, discarding the bytes."""
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if _MEMBER_RE.fullmatch(i.filename)]
    started = time.perf_counter()
    cpu_started = time.process_time()
    with path.open("rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            header = fh.read(30)
            name_len = int.from_bytes(header[26:28], "little")
            extra_len = int.from_bytes(header[28:30], "little")
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            left = info.compress_size
            inflater = (
                zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
            )
            while left:
                block = fh.read(min(left, 1 << 20))
                left -= len(block)
                if inflater is not None:
                    inflater.decompress(block)
    return time.perf_counter() - started, time.process_time() - cpu_started


def console_script() -> str:
    local = Path(sys.executable).parent / "passerelle"
    found = str(local) if local.exists() else shutil.which("passerelle")
    if not found:
        raise SystemExit(
            "the `passerelle` console script is not installed (uv sync --all-packages)"
        )
    return found


def cli_env(directory: Path, bytecode_cache: bool) -> dict[str, str]:
    """The CLI's environment: by default, with a bytecode cache, as an installed program has.

    Python caches compiled modules after a program's first start; with
    ``PYTHONDONTWRITEBYTECODE`` set (some sandboxes and CI images do) nothing is
    cached and every run compiles numpy and the CLI from source again, ≈0.2 s of
    CPU that no person running the command pays twice. The cache goes to the
    bench's cache directory (``PYTHONPYCACHEPREFIX``), never into the checkout.
    """
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
    return env


# Linux charges a child's peak RSS with the peak of the memory it was forked (or
# vforked) from: a CLI started from this process would report this process's own
# peak (its in-process library runs hold 100 MB and more). A small launcher,
# itself a fresh program, starts the CLI and reports the CLI's figures instead.
_LAUNCHER = """
import json, os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY)
err = os.open(sys.argv[2], os.O_WRONLY)
actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[3], sys.argv[3:], dict(os.environ), file_actions=actions)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "status": os.waitstatus_to_exitcode(status),
    "cpu_seconds": usage.ru_utime + usage.ru_stime,
    "maxrss_kb": usage.ru_maxrss,
}))
"""


def run_cli(path: Path, env: dict[str, str]) -> CliRun:
    """One `passerelle archive inspect PATH --json` run: wall time, peak RSS, output.

    Timed by the launcher around the CLI alone (the launcher's own start is not counted).
    """
    with tempfile.NamedTemporaryFile() as out, tempfile.NamedTemporaryFile() as err:
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, out.name, err.name]
        command = [console_script(), "archive", "inspect", str(path), "--json"]
        launched = subprocess.run(
            [*launcher, *command],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(launched.stdout)
        if figures["status"] != 0:
            raise SystemExit(f"CLI failed ({figures['status']}): {err.read().decode()}")
        output = json.loads(out.read())
    return CliRun(figures["seconds"], figures["cpu_seconds"], figures["maxrss_kb"] / 1024, output)


def library_seconds(path: Path) -> float:
    from passerelle_xarchive import read_archive

    started = time.perf_counter()
    with read_archive(path) as contents:
        len(contents.followers)
    return time.perf_counter() - started


@dataclass
class Measure:
    followers: int
    following: int
    seconds: float
    seconds_median: float
    floor_seconds: float
    cpu_seconds: float
    floor_cpu_seconds: float
    library_seconds: float
    fixed_seconds: float
    peak_rss_mb: float
    output: dict[str, object]

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_seconds

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_seconds / self.floor_cpu_seconds


def measure(
    followers: int, following: int, runs: int, directory: Path, env: dict[str, str]
) -> Measure:
    path = archive_for(followers, following, directory)
    tiny = archive_for(1, 1, directory)
    run_cli(tiny, env)  # warm-up: fills the bytecode cache, if any, and the page cache
    floors: list[tuple[float, float]] = []
    clis: list[CliRun] = []
    libs: list[float] = []
    fixed: list[float] = []
    for _ in range(runs):  # interleaved, so a disturbance hits all alike
        floors.append(floor_seconds(path))
        clis.append(run_cli(path, env))
        libs.append(library_seconds(path))
        fixed.append(run_cli(tiny, env).seconds)
    output = clis[-1].output
    if output.get("followers") != followers or output.get("following") != following:
        print(f"warning: counts differ from the spec: {output}", file=sys.stderr)
    return Measure(
        followers=followers,
        following=following,
        seconds=min(r.seconds for r in clis),
        seconds_median=statistics.median(r.seconds for r in clis),
        floor_seconds=min(wall for wall, _ in floors),
        cpu_seconds=min(r.cpu_seconds for r in clis),
        floor_cpu_seconds=min(cpu for _, cpu in floors),
        library_seconds=min(libs),
        fixed_seconds=min(fixed),
        peak_rss_mb=max(r.peak_rss_mb for r in clis),
        output=output,
    )


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--followers", type=int, default=1_000_000)
    parser.add_argument("--following", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--cache-dir", default=None, help="where generated archives are cached")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help=f"above {BASELINE_FOLLOWERS:,} followers, skip the 1M run used for RSS growth",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the CLI as PYTHONDONTWRITEBYTECODE leaves it: compiling every module "
        "at every start",
    )
    args = parser.parse_args(argv)
    directory = cache_dir(args.cache_dir)
    bytecode_cache = not args.no_bytecode_cache
    env = cli_env(directory, bytecode_cache)

    result = measure(args.followers, args.following, max(1, args.runs), directory, env)
    baseline: Measure | None = None
    if args.followers > BASELINE_FOLLOWERS and not args.no_baseline:
        baseline = measure(BASELINE_FOLLOWERS, args.following, max(1, args.runs), directory, env)

    print(f"archive: {result.followers:,} followers, {result.following:,} following")
    print(
        "  CLI started with a bytecode cache (as installed, after its first run)"
        if bytecode_cache
        else "  CLI started without a bytecode cache (compiles its modules at every start)"
    )
    print(f"  floor (inflate only, in-process): {result.floor_seconds:.3f} s")
    print(
        f"  passerelle archive inspect --json: {result.seconds:.3f} s best, "
        f"{result.seconds_median:.3f} s median, peak RSS {result.peak_rss_mb:.1f} MB"
    )
    print(f"  library only (read_archive, in-process): {result.library_seconds:.3f} s")
    print(
        f"  CLI fixed cost (same command on a 1-follower archive: interpreter, imports): "
        f"{result.fixed_seconds:.3f} s"
    )
    print(
        f"  CPU time: CLI {result.cpu_seconds:.3f} s (all threads) vs floor "
        f"{result.floor_cpu_seconds:.3f} s, ratio {result.cpu_ratio:.2f} (less sensitive to "
        f"other load than wall time); load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  ratio CLI/floor: {result.ratio:.2f}  (library/floor: "
        f"{result.library_seconds / result.floor_seconds:.2f}; CLI minus its fixed cost, "
        f"over floor: {(result.seconds - result.fixed_seconds) / result.floor_seconds:.2f})"
    )
    targets: dict[str, bool] = {
        f"ratio <= {TARGET_RATIO:g}": result.ratio <= TARGET_RATIO,
        f"peak RSS <= {TARGET_RSS_MB:g} MB": result.peak_rss_mb <= TARGET_RSS_MB,
    }
    growth: float | None = None
    if baseline is not None:
        growth = result.peak_rss_mb / baseline.peak_rss_mb
        print(
            f"  baseline {baseline.followers:,} followers: peak RSS {baseline.peak_rss_mb:.1f} MB, "
            f"{baseline.seconds:.3f} s (ratio {baseline.ratio:.2f})"
        )
        targets[f"RSS <= {TARGET_RSS_GROWTH:.2f} x the 1M figure"] = growth <= TARGET_RSS_GROWTH
    print("targets:")
    for label, ok in targets.items():
        print(f"  {label}: {_mark(ok)}")
    line: dict[str, object] = {
        "bench": "ingest",
        "followers": result.followers,
        "following": result.following,
        "seconds": round(result.seconds, 4),
        "floor_seconds": round(result.floor_seconds, 4),
        "ratio": round(result.ratio, 3),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "library_seconds": round(result.library_seconds, 4),
        "cli_fixed_seconds": round(result.fixed_seconds, 4),
        "processing_ratio": round(
            (result.seconds - result.fixed_seconds) / result.floor_seconds, 3
        ),
        "cpu_seconds": round(result.cpu_seconds, 4),
        "floor_cpu_seconds": round(result.floor_cpu_seconds, 4),
        "cpu_ratio": round(result.cpu_ratio, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "bytecode_cache": bytecode_cache,
        "targets_met": all(targets.values()),
    }
    if growth is not None and baseline is not None:
        line["baseline_peak_rss_mb"] = round(baseline.peak_rss_mb, 1)
        line["rss_growth"] = round(growth, 3)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
