"""A real HTTP server speaking the Mastodon API, with Mastodon's limits, for tests and the demo.

Run one instance per process::

    uv run python -m tests.peers.mastodon --port 0 --domain alpha.test --data-dir /tmp/alpha

Tests use :class:`tests.peers.mastodon.harness.MastodonFleet` or the fixtures in
:mod:`tests.peers.mastodon.fixtures`. See docs/testing-mastodon.md.
"""
