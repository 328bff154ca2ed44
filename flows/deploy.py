"""Register mlex-tomo's deployments on a Prefect server.

Entrypoints are module paths (`flows.ping:ping`), so a worker needs only the
installed package: no code storage, no working directory to pull.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.callables import parameter_schema

from flows.ping import ping
from flows.segmentation import segmentation
from mlex_tomo.settings import PrefectSettings, StackSettings


@dataclass(frozen=True)
class DeploymentSpec:
    flow: Flow
    name: str
    description: str

    @property
    def entrypoint(self) -> str:
        return f"{self.flow.fn.__module__}:{self.flow.fn.__name__}"


DEPLOYMENTS = (
    DeploymentSpec(ping, "ping", "Proves that a worker of the pool picks up and finishes runs."),
    DeploymentSpec(
        segmentation,
        "segmentation",
        "Train a segmentation model on sparse labels and segment the volume, by launching the segmentation job.",
    ),
)


def register_deployments(settings: StackSettings) -> list[str]:
    """Create or update every deployment (and the work pool if missing); return their names."""
    with temporary_settings({PREFECT_API_URL: settings.prefect.resolved_api_url}):
        return asyncio.run(_register(settings.prefect))


async def _register(prefect: PrefectSettings) -> list[str]:
    names, work_pool = [], prefect.work_pool
    async with get_client() as client:
        try:
            await client.read_work_pool(work_pool)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
        for queue in dict.fromkeys([prefect.forest_queue, prefect.network_queue]):  # where flows/submit.py routes runs
            try:
                await client.read_work_queue_by_name(queue, work_pool_name=work_pool)
            except ObjectNotFound:
                await client.create_work_queue(queue, work_pool_name=work_pool)
        for spec in DEPLOYMENTS:
            flow_id = await client.create_flow_from_name(spec.flow.name)
            await client.create_deployment(
                flow_id=flow_id,
                name=spec.name,
                entrypoint=spec.entrypoint,
                work_pool_name=work_pool,
                description=spec.description,
                parameter_openapi_schema=parameter_schema(spec.flow).model_dump_for_openapi(),
                enforce_parameter_schema=True,
            )
            names.append(f"{spec.flow.name}/{spec.name}")
    return names
