"""`python -m segmentation params.yaml`: the job the Prefect worker launches.

Exit codes (also in docs/user-guide.md):
  0  done
  1  unexpected failure (a bug: the traceback is on standard error)
  2  the parameters file is missing, not YAML, or invalid (the message names the field)
  3  the data does not fit the parameters (wrong node, mask mismatch, no stored model)
  4  Tiled could not be reached, or refused a request (e.g. no or wrong TILED_API_KEY)
  5  the device asked for is not on this node (device: cuda without a GPU)
  143  cancelled by SIGTERM (130 for Ctrl-C); results written so far are marked cancelled
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

import httpx
import yaml
from pydantic import ValidationError

from mlex_tomo.validation import validation_problems
from segmentation.job import Cancelled, DeviceUnavailable, run_job
from segmentation.model_store import ModelNotFound
from segmentation.parameters import LAUNCHER_PID_VARIABLE, JobParameters
from segmentation.progress import JsonLinesProgress
from segmentation.tiled_io import InvalidInput

EXIT_FAILED = 1
EXIT_INVALID_PARAMETERS = 2
EXIT_INVALID_INPUT = 3
EXIT_TILED_UNAVAILABLE = 4
EXIT_DEVICE_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130
EXIT_CANCELLED = 143
PR_SET_PDEATHSIG = 1  # prctl(2)


class InvalidParameters(ValueError):
    pass


def load_parameters(path: Path) -> JobParameters:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InvalidParameters(f"cannot read the parameters file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise InvalidParameters(f"{path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise InvalidParameters(f"{path} must hold a mapping of parameters, not {type(document).__name__}")
    try:
        return JobParameters.model_validate(document)
    except ValidationError as error:
        raise InvalidParameters(f"{path} has invalid parameters:\n{describe(error)}") from error


def describe(error: ValidationError) -> str:
    return "\n".join(f"  {line}" for line in validation_problems(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segmentation",
        description="Train a segmentation model on sparse labels and/or segment a volume, from and to Tiled.",
        epilog="Progress is printed as one JSON object per line. The Tiled API key is read from TILED_API_KEY.",
    )
    parser.add_argument("parameters", type=Path, help="YAML parameters file (see docs/user-guide.md)")
    arguments = parser.parse_args(argv)
    stop_with_the_launcher()
    progress = JsonLinesProgress()

    def fail(code: int, message: str) -> int:
        print(f"segmentation: {message}", file=sys.stderr, flush=True)
        progress({"event": "failed", "stage": "failed", "exit_code": code, "message": message})
        return code

    try:
        parameters = load_parameters(arguments.parameters)
    except InvalidParameters as error:
        return fail(EXIT_INVALID_PARAMETERS, str(error))
    previous_handler = signal.signal(signal.SIGTERM, _cancel)
    try:
        run_job(parameters, progress)
    except Cancelled:
        return fail(EXIT_CANCELLED, "cancelled")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted")
    except (InvalidInput, ModelNotFound) as error:
        return fail(EXIT_INVALID_INPUT, str(error))
    except DeviceUnavailable as error:
        return fail(EXIT_DEVICE_UNAVAILABLE, str(error))
    except httpx.HTTPStatusError as error:
        if error.response.status_code == 404:
            return fail(EXIT_INVALID_INPUT, f"Tiled has no node at {error.request.url}")
        return fail(EXIT_TILED_UNAVAILABLE, f"Tiled answered {error.response.status_code} to {error.request.url}: {error}")
    except httpx.HTTPError as error:
        return fail(EXIT_TILED_UNAVAILABLE, f"cannot reach Tiled: {error}")
    except Exception as error:  # noqa: BLE001 - the job's last word must be a progress line, not only a traceback
        traceback.print_exc()
        return fail(EXIT_FAILED, f"unexpected {type(error).__name__}: {error}")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


def stop_with_the_launcher() -> None:
    """SIGTERM, the cancel path, when the process that launched this job dies (Linux).

    A flow-run process killed outright (a worker crash, `kill -9`) left its job running
    on, orphaned. The launcher names itself in LAUNCHER_PID_VARIABLE; a container's job
    has no such parent to watch (its engine stops it).
    """
    launcher = os.environ.get(LAUNCHER_PID_VARIABLE)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _cancel(signal_number: int, frame: FrameType | None) -> None:
    raise Cancelled()


if __name__ == "__main__":
    sys.exit(main())
