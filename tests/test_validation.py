"""mlex_tomo.validation: how every entry point words a validation error."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, field_validator, model_validator

from mlex_tomo.validation import validation_problems


class Inner(BaseModel):
    port: int


class Outer(BaseModel):
    name: str
    inner: Inner
    sizes: list[int] = []

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError("letters, digits and _ only")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Outer":
        if self.name == "forbidden":
            raise ValueError("this name is reserved")
        return self


def problems(document: dict, **options) -> list[str]:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate(document)
    return validation_problems(raised.value, **options)


def test_one_line_per_problem_led_by_the_dotted_field_and_without_pydantics_prefix():
    assert problems({"name": "a b", "inner": {"port": "x"}}) == [
        "name: letters, digits and _ only",
        "inner.port: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_a_problem_of_the_whole_object_is_named_as_the_caller_says():
    assert problems({"name": "forbidden", "inner": {"port": 1}}, whole="body") == ["body: this name is reserved"]


def test_the_rejected_value_is_shown_only_for_scalars_and_never_for_a_missing_field():
    assert problems({"name": "ok", "inner": {"port": "x"}, "sizes": {"a": 1}}, show_input=True) == [
        "inner.port: Input should be a valid integer, unable to parse string as an integer (got 'x')",
        "sizes: Input should be a valid list",
    ]
    assert problems({"inner": {"port": 1}}, show_input=True) == ["name: Field required"]


def test_field_names_can_be_spelled_as_command_line_options():
    option = lambda location: "--" + "-".join(map(str, location)).replace("_", "-")  # noqa: E731
    assert problems({"name": "a b", "inner": {"port": 1}}, field_name=option) == ["--name: letters, digits and _ only"]
