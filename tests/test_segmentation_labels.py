"""Masks a model cannot learn from are refused in words, by the job and the web app alike."""

from __future__ import annotations

import numpy as np
import pytest

from dash_app.annotations import Annotations, ClassInfo, Stroke, training_problems
from segmentation.labels import label_problems
from segmentation.training import train_network
from segmentation.models import TUNetParameters

NAMES = {0: "pore", 1: "matrix", 2: "crack"}


def labels_of(*classes: int) -> np.ndarray:
    labels = np.full((2, 16, 16), -1, np.int8)
    for position, label in enumerate(classes):
        labels[0, position, :] = label
    return labels


def test_two_painted_classes_of_two_declared_pass():
    assert label_problems(labels_of(0, 1), {0: "pore", 1: "matrix"}) == []


def test_nothing_painted_asks_for_two_classes():
    assert label_problems(labels_of(), NAMES) == ["nothing is painted: paint at least two classes, a model learns to tell them apart"]


def test_one_painted_class_is_named():
    assert label_problems(labels_of(1, 1), NAMES) == [
        "only class 'matrix' is painted: paint at least one more, a model learns to tell classes apart"
    ]


def test_a_declared_class_without_pixels_is_named():
    assert label_problems(labels_of(0, 1), NAMES) == [
        "class 'crack' has no painted pixel: paint some, or remove the class; a model never predicts a class it has not seen"
    ]
    four = {**NAMES, 3: "fibre"}
    assert label_problems(labels_of(0, 1), four) == [
        "classes 'crack', 'fibre' have no painted pixel: paint some, or remove them; a model never predicts a class it has not seen"
    ]


def test_a_network_refuses_one_class_instead_of_reporting_a_perfect_score():
    slices = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="at least two classes"):
        train_network(slices, labels_of(1, 1), TUNetParameters(depth=2, base_channels=4, num_epochs=1), 3, "cpu")


def annotations(*class_ids: int, classes: int = 2, shape=(4, 32, 32)) -> Annotations:
    infos = {index: ClassInfo(label=f"class {index + 1}", color="#112233") for index in range(classes)}
    strokes = [
        Stroke(axis="z", index=1, tool="brush", class_id=class_id, points=[(2.0, 4.0 + 8 * row), (20.0, 4.0 + 8 * row)])
        for row, class_id in enumerate(class_ids)
    ]
    return Annotations(scan="scan", volume_shape=shape, classes=infos, strokes=strokes)


def test_the_web_app_checks_the_rasterised_labels_as_the_job_does():
    assert training_problems(annotations(0, 1), (4, 32, 32)) == []
    assert training_problems(annotations(0, 0), (4, 32, 32)) == [
        "only class 'class 1' is painted: paint at least one more, a model learns to tell classes apart"
    ]
    assert "class 'class 3' has no painted pixel" in training_problems(annotations(0, 1, classes=3), (4, 32, 32))[0]


def test_labels_painted_on_another_volume_shape_are_refused():
    (problem,) = training_problems(annotations(0, 1), (4, 32, 40))
    assert problem == (
        "the labels were painted on a volume of shape (4, 32, 32), the scan now holds (4, 32, 40): reload the page to start afresh"
    )
