"""flows.segmentation.SegmentationRequest: nodes by path, and the job's own rules, before any run starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.segmentation import SegmentationRequest, step_job_ids

SCAN = "recons/k11-37086"
MASK = "masks/k11-37086/3f2a"
RANDOM_FOREST = {"name": "RandomForest"}


def refusal(**fields) -> str:
    with pytest.raises(ValidationError) as refused:
        SegmentationRequest.model_validate(fields)
    return str(refused.value)


def test_each_kind_of_request_is_accepted_with_what_it_needs():
    SegmentationRequest(steps="train", data=SCAN, mask=MASK, model=RANDOM_FOREST)
    SegmentationRequest(steps="train_and_infer", data=SCAN, mask=MASK, model=RANDOM_FOREST)
    SegmentationRequest(steps="infer", data=SCAN, trained_job_id="k11-1a2b3c4d-train")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": "infer"}, "step 'infer': job: task 'infer' needs trained_job_id"),
        ({"steps": "infer", "trained_job_id": "t", "model": RANDOM_FOREST}, "takes its model from trained_job_id"),
        ({"steps": "train", "model": RANDOM_FOREST}, "step 'train': job: task 'train_infer' needs mask"),
        ({"steps": "train_and_infer", "mask": MASK}, "needs model"),
        ({"steps": "train", "mask": MASK, "model": RANDOM_FOREST, "trained_job_id": "t"}, "trained_job_id is only for task 'infer'"),
    ],
)
def test_the_jobs_rules_refuse_a_request_naming_the_request_fields(fields, message):
    explanation = refusal(data=SCAN, **fields)
    assert message in explanation
    assert "mask_uri" not in explanation and "data_uri" not in explanation


@pytest.mark.parametrize("path", ["../secrets", "recons/../../etc", "/recons/x", "recons//x", "http://evil.example/x", "recons/x y", ""])
def test_a_node_is_named_by_a_plain_path_in_the_tree(path):
    assert "data" in refusal(steps="infer", data=path, trained_job_id="t")


def test_the_job_reads_and_writes_on_the_workers_tiled_whatever_address_the_web_app_used():
    request = SegmentationRequest(steps="train_and_infer", data=SCAN, mask=MASK, model=RANDOM_FOREST, device="cpu")
    job_ids = step_job_ids(request, "1a2b3c4d-0000")
    train = request.job_parameters("train", job_ids["train"], None, "http://tiled:8000", Path("/models"))
    infer = request.job_parameters("infer", job_ids["infer"], job_ids["train"], "http://tiled:8000/", Path("/models"))
    assert str(train.data_uri) == str(infer.data_uri) == "http://tiled:8000/api/v1/metadata/recons/k11-37086"
    assert str(train.mask_uri) == "http://tiled:8000/api/v1/metadata/masks/k11-37086/3f2a"
    assert str(infer.result_uri) == "http://tiled:8000/api/v1/metadata/results"
    assert (train.task, train.slice_selection, train.model.name) == ("train_infer", "labelled", "RandomForest")
    assert (infer.task, infer.slice_selection, infer.model, infer.trained_job_id) == ("infer", "all", None, job_ids["train"])
