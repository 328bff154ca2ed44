"""The model form, generated from the segmentation job's own parameter models.

Every field of `segmentation.models` becomes a control of the kind its type asks for,
and the form's values are validated by the same pydantic model the job validates
against, so the browser can never offer what the job would refuse.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from dash import dcc, html
from pydantic import BaseModel, ValidationError

from mlex_tomo.validation import validation_problems
from segmentation.models import ModelParameters, NetworkParameters

MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["name"].default: model for model in get_args(get_args(ModelParameters)[0])
}
DEFAULT_MODEL = "RandomForest"  # the user guide's first recommendation: seconds on a CPU, robust on scribbles
FIELD_ID = "model-field"

ControlKind = Literal["choice", "flag", "number", "numbers", "choices"]


@dataclass(frozen=True)
class FormField:
    name: str
    kind: ControlKind
    default: Any
    description: str | None
    options: tuple[Any, ...] = ()
    integer: bool = False
    optional: bool = False
    training: bool = False  # shared by the networks, shown under "Training"


def form_fields(model_name: str) -> list[FormField]:
    model = MODELS[model_name]
    return [
        _form_field(name, info.annotation, info.get_default(call_default_factory=True), info.description, model)
        for name, info in model.model_fields.items()
        if name != "name"
    ]


def _form_field(name: str, annotation: Any, default: Any, description: str | None, model: type[BaseModel]) -> FormField:
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        optional, annotation = len(members) < len(get_args(annotation)), members[0]
    common = dict(
        name=name, default=default, description=description, optional=optional,
        training=issubclass(model, NetworkParameters) and name in NetworkParameters.model_fields,
    )
    if get_origin(annotation) is Literal:
        return FormField(kind="choice", options=get_args(annotation), **common)
    if annotation is bool:
        return FormField(kind="flag", **common)
    if annotation in (int, float):
        return FormField(kind="number", integer=annotation is int, **common)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if get_origin(item) is Literal:
            return FormField(kind="choices", options=get_args(item), **common)
        return FormField(kind="numbers", integer=item is int, **common)
    raise TypeError(f"no form control for {name}: {annotation!r}")


def render(model_name: str) -> list[Any]:
    """The model's own fields, then the training settings it shares with the other networks, folded away.

    The defaults are the measured ones, so most users never open the form.
    """
    fields = form_fields(model_name)
    own = [_row(field) for field in fields if not field.training]
    training = [_row(field) for field in fields if field.training]
    children: list[Any] = [html.Div(className="form-grid", children=own)]
    if training:
        children.append(html.Details([html.Summary("Training"), html.Div(className="form-grid", children=training)]))
    # data-model says which model's form is on screen (the form is replaced when the model changes).
    return [html.Details(className="model-parameters", children=[html.Summary("Parameters"), *children], **{"data-model": model_name})]


def _row(field: FormField) -> html.Div:
    control_id = {"type": FIELD_ID, "name": field.name}
    if field.kind == "choice":
        control = dcc.Dropdown(id=control_id, options=list(field.options), value=field.default, clearable=False)
    elif field.kind == "flag":
        control = dcc.Checklist(id=control_id, options=[{"label": "", "value": "on"}], value=["on"] if field.default else [])
    elif field.kind == "number":
        control = dcc.Input(id=control_id, type="number", value=field.default, step=1 if field.integer else "any", debounce=True)
    elif field.kind == "choices":
        control = dcc.Checklist(id=control_id, options=list(field.options), value=list(field.default or []))
    else:
        text = ", ".join(f"{value:g}" for value in field.default) if field.default else ""
        control = dcc.Input(id=control_id, type="text", value=text, placeholder="comma-separated" if field.optional else "", debounce=True)
    return html.Label(className="form-row", title=field.description or "", children=[html.Span(field.name.replace("_", " ")), control])


def parameters_from_form(model_name: str, names: list[str], values: list[Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the validated parameters, or None) and the errors, each naming its field."""
    kinds = {field.name: field for field in form_fields(model_name)}
    if set(names) != set(kinds):
        return None, [f"the form shows other fields than {model_name} has; choose the model again"]
    raw: dict[str, Any] = {"name": model_name}
    for name, value in zip(names, values):
        field = kinds[name]
        if field.kind == "flag":
            raw[name] = bool(value)
        elif field.kind == "numbers":
            items = [item.strip() for item in str(value or "").split(",") if item.strip()]
            raw[name] = None if field.optional and not items else items
        elif field.kind == "number" and value in (None, "") and not field.optional:
            return None, [f"{name}: give a number"]
        else:
            raw[name] = value
    try:
        parameters = MODELS[model_name].model_validate(raw)
    except ValidationError as error:
        return None, validation_problems(error)
    return parameters.model_dump(mode="json"), []
