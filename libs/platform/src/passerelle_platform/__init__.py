"""passerelle's shared runtime: settings, broker, telemetry, metrics, database, logging."""

__version__ = "0.1.0"
