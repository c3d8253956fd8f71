"""Real peer servers (Mastodon-API, ...) that tests and the local demo run as processes."""
