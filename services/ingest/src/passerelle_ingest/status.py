"""The system's health as seen from the edge: each service asked over NATS."""

from __future__ import annotations

import asyncio
from typing import Literal

import nats.errors
from faststream.nats import NatsBroker
from pydantic import BaseModel

from passerelle_contracts import SERVICES, HealthReply, HealthRequest, health_subject

ServiceState = Literal["up", "degraded", "down"]


class ServiceStatus(BaseModel):
    """One service's answer, or ``down`` with why it did not answer."""

    service: str
    status: ServiceState
    version: str | None = None
    region: str | None = None
    checks: dict[str, bool] = {}
    error: str | None = None


class SystemStatus(BaseModel):
    """Every service's status and the overall verdict."""

    region: str
    status: ServiceState
    services: dict[str, ServiceStatus]


async def ask_service(
    broker: NatsBroker, service: str, region: str, wait_seconds: float
) -> ServiceStatus:
    """Send one health request; no answer in time means ``down``."""
    try:
        response = await broker.request(
            HealthRequest(region=region), health_subject(service), timeout=wait_seconds
        )
        reply = HealthReply.model_validate_json(response.body)
    except nats.errors.NoRespondersError:
        return ServiceStatus(service=service, status="down", error="no_responders")
    except (TimeoutError, nats.errors.Error) as error:
        return ServiceStatus(service=service, status="down", error=type(error).__name__)
    return ServiceStatus(
        service=service,
        status=reply.status,
        version=reply.service_version,
        region=reply.region,
        checks=reply.checks,
    )


async def system_status(broker: NatsBroker, region: str, wait_seconds: float) -> SystemStatus:
    """Ask every service at once."""
    if broker._connection is None or not broker._connection.is_connected:  # noqa: SLF001
        services = {
            s: ServiceStatus(service=s, status="down", error="edge_not_connected") for s in SERVICES
        }
    else:
        answers = await asyncio.gather(
            *(ask_service(broker, s, region, wait_seconds) for s in SERVICES)
        )
        services = {a.service: a for a in answers}
    states = {s.status for s in services.values()}
    overall: ServiceState = (
        "up" if states == {"up"} else "down" if states == {"down"} else "degraded"
    )
    return SystemStatus(region=region, status=overall, services=services)
