"""The message a reconstruction program publishes when a volume is written."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingester.errors import Rejected


class IngestMessage(BaseModel):
    """`{"filePath": ".../k11-37086_processed.nxs", "status": "COMPLETE", ...}`.

    Fields other than `filePath` and `status` are kept and stored with the scan, so
    whatever the producer says about the scan (beamline, visit, ...) is not lost.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    file_path: str = Field(alias="filePath", min_length=1)
    status: str | None = None

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
            problems = "; ".join(
                f"{'.'.join(map(str, problem['loc'])) or 'body'}: {problem['msg']}"
                for problem in error.errors()
            )
            raise Rejected(f"invalid message: {problems}") from None

    def is_final(self, accepted_statuses: Iterable[str]) -> bool:
        """Without a status the producer only announces finished files."""
        if self.status is None:
            return True
        return self.status.strip().upper() in {status.upper() for status in accepted_statuses}

    def producer_fields(self) -> dict[str, Any]:
        """The message as the producer sent it, for the scan's metadata."""
        return self.model_dump(by_alias=True, exclude_none=True)
