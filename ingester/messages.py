"""The message a reconstruction program publishes when a volume is written."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingester.errors import Rejected
from mlex_tomo.validation import validation_problems

MAX_PATH_CHARACTERS = 4096  # PATH_MAX on Linux
MAX_FIELD_BYTES = 1024  # one producer field, as JSON
MAX_FIELDS_BYTES = 8192  # all of them: they are copied into every listing of /recons that includes the scan
MAX_FIELD_NAME_CHARACTERS = 128


class IngestMessage(BaseModel):
    """`{"filePath": ".../k11-37086_processed.nxs", "status": "COMPLETE", ...}`.

    Fields other than `filePath` and `status` are kept and stored with the scan, so
    whatever the producer says about the scan (beamline, visit, ...) is not lost, within
    bounds: a field too large is left out and named in `fields_left_out`.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    file_path: str = Field(alias="filePath", min_length=1, max_length=MAX_PATH_CHARACTERS)
    status: str | None = Field(default=None, max_length=64)

    @classmethod
    def from_body(cls, body: str | bytes) -> IngestMessage:
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Rejected(f"body is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise Rejected(f"body must be a JSON object, got {type(document).__name__}")
        try:
            return cls.model_validate(document)
        except ValidationError as error:
            problems = "; ".join(validation_problems(error, whole="body"))
            raise Rejected(f"invalid message: {problems}") from None

    def is_final(self, accepted_statuses: Iterable[str]) -> bool:
        """Without a status the producer only announces finished files."""
        if self.status is None:
            return True
        return self.status.strip().upper() in {status.upper() for status in accepted_statuses}

    def producer_fields(self) -> dict[str, Any]:
        """The message as the producer sent it, for the scan's metadata, each field and all of them bounded."""
        kept: dict[str, Any] = {}
        left_out: list[str] = []
        size = 0
        for name, value in self.model_dump(by_alias=True, exclude_none=True).items():
            length = len(json.dumps(value, default=str).encode())
            if len(name) > MAX_FIELD_NAME_CHARACTERS or length > MAX_FIELD_BYTES or size + length > MAX_FIELDS_BYTES:
                left_out.append(name[:MAX_FIELD_NAME_CHARACTERS])
                continue
            kept[name] = value
            size += length
        if left_out:
            kept["fields_left_out"] = left_out[: MAX_FIELDS_BYTES // MAX_FIELD_NAME_CHARACTERS]
        return kept
