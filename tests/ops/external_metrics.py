"""Metrics the dashboards and rules may use although no passerelle service exports them.

Each comes from a component deployed next to the services (k8s/base) and is listed
with where it is defined, at the version the manifests pin. Everything else a
dashboard or rule names must be exported by a running passerelle service
(test_metrics_exported.py checks it against the live /metrics of all four).
"""

from __future__ import annotations

#: Prometheus itself: one series per scrape target (relabelled with region, service).
PROMETHEUS = frozenset({"up"})

#: prometheus-nats-exporter 0.20.1 (sidecar of the NATS pods), run with
#: -varz -connz -routez -leafz -healthz -jsz=all. ``gnatsd_healthz_status`` is
#: collector/healthz.go (0 = ok); ``jetstream_*`` are collector/jsz.go. The
#: ``gnatsd_varz_*`` gauges are made by the exporter from the numeric fields of the
#: server's /varz: test_metrics_exported.py derives them from a real nats-server.
NATS_EXPORTER = frozenset(
    {
        "gnatsd_healthz_status",
        "jetstream_server_total_streams",
        "jetstream_server_total_message_bytes",
        "jetstream_server_max_storage",
        "jetstream_stream_total_messages",
        "jetstream_stream_total_bytes",
        "jetstream_consumer_num_pending",
        "jetstream_consumer_num_ack_pending",
        "jetstream_consumer_num_redelivered",
    }
)
NATS_VARZ_PREFIX = "gnatsd_varz_"

#: CloudNativePG 1.30.0 instance exporter: cnpg_collector_* are built in
#: (pkg/management/postgres/webserver/metricserver/pg_collector.go), the others come
#: from the default monitoring queries (config/manager/default-monitoring.yaml:
#: query name + column). barman_cloud_* from the Barman Cloud plugin 0.14.0
#: (web/docs/observability.md).
CLOUDNATIVE_PG = frozenset(
    {
        "cnpg_collector_up",
        "cnpg_pg_replication_lag",
        "cnpg_pg_stat_database_deadlocks",
        "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp",
    }
)

ALLOWED = PROMETHEUS | NATS_EXPORTER | CLOUDNATIVE_PG
