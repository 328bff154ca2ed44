"""Pydantic's validation errors as people read them, the same at every entry point.

One line per problem, led by the field's name: settings files, CLI options, broker
messages, web forms and the job's parameters file all say what is wrong this way.
Depends on pydantic only: the job's image ships it beside mlex_tomo.tiled_names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import ValidationError

FieldName = Callable[[Sequence[int | str]], str]


def dotted(location: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in location)


def validation_problems(
    error: ValidationError, *, field_name: FieldName = dotted, whole: str = "(top level)", show_input: bool = False
) -> list[str]:
    """`field: message` for each problem; `whole` names a problem with the object itself.

    `show_input` appends the rejected value when it is a scalar (never for a missing
    field, a mapping or a list).
    """
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        value = problem.get("input")
        if show_input and problem["type"] != "missing" and not isinstance(value, (dict, list)):
            message += f" (got {value!r})"
        lines.append(f"{field_name(problem['loc']) or whole}: {message}")
    return lines
