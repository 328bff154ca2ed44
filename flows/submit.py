"""Starting a run of the `segmentation` deployment, as the web app and `mlex-tomo demo` do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.segmentation import SegmentationRequest
from mlex_tomo.settings import PrefectSettings, StackSettings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

DEPLOYMENT = "segmentation/segmentation"


def submit_segmentation(settings: StackSettings, request: SegmentationRequest, tags: list[str]) -> FlowRun:
    """The run, created and scheduled for the work pool; following it is up to the caller."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: settings.prefect.resolved_api_url}):
        return run_deployment(
            DEPLOYMENT,
            parameters={"request": request.model_dump(mode="json", exclude_none=True)},
            tags=tags,
            work_queue_name=work_queue_for(request, settings.prefect),
            timeout=0,
            as_subflow=False,
        )


def work_queue_for(request: SegmentationRequest, prefect: PrefectSettings) -> str:
    """Training a random forest may run on any node; the rest goes to the GPU nodes' queue.

    A run that only segments goes there too: its model's kind is known only once the
    job reads it, and a forest segments on a GPU node as well.
    """
    model = request.model
    return prefect.forest_queue if model is not None and model.name == "RandomForest" else prefect.network_queue
