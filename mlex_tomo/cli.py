"""The `mlex-tomo` command.

Any setting can be overridden after the command with its dotted name, for example
`mlex-tomo up --tiled.port 8001 --prefect.worker_query_seconds 2`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mlex_tomo.settings import (
    SettingsError,
    StackSettings,
    load_settings,
    parse_dotted_overrides,
    settings_as_yaml,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    arguments, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_dotted_overrides(extra)
        if arguments.data_dir is not None:
            overrides["data_dir"] = str(arguments.data_dir)
        if getattr(arguments, "broker_url", None):
            overrides.setdefault("broker", {})["url"] = arguments.broker_url
        settings = load_settings(arguments.config, overrides)
    except SettingsError as error:
        print(f"mlex-tomo: {error}", file=sys.stderr)
        return EXIT_USAGE
    command: Callable[[StackSettings, argparse.Namespace], int] = arguments.command
    return command(settings, arguments)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlex-tomo",
        description="Segmentation workflow stack for tomography beamlines.",
        epilog="Override any setting with its dotted name, e.g. --tiled.port 8001 "
        "(see `mlex-tomo generate-config`).",
        allow_abbrev=False,
    )
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--config", type=Path, help="YAML settings file (default: $MLEX_TOMO_CONFIG)")
    common.add_argument("--data-dir", type=Path, help="shortcut for --data_dir")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", parents=[common], allow_abbrev=False,
        help="start the whole stack on this machine and keep it running until Ctrl-C",
    )
    up.add_argument("--broker-url", help="use this broker (stomp://host:port) instead of starting one")
    up.set_defaults(command=_up)

    status = commands.add_parser(
        "status", parents=[common], allow_abbrev=False,
        help="report each service's health; exit 1 if any is down",
    )
    status.set_defaults(command=_status)

    ingester = commands.add_parser(
        "ingester", parents=[common], allow_abbrev=False,
        help="listen on the broker and register announced reconstructions in Tiled",
    )
    ingester.set_defaults(command=_ingester)

    ingest = commands.add_parser(
        "ingest", parents=[common], allow_abbrev=False,
        help="register one reconstruction file or folder by hand, as if announced",
    )
    ingest.add_argument("path", help="the file (NeXus/HDF5, Zarr, TIFF) or TIFF stack folder")
    ingest.set_defaults(command=_ingest)

    generate = commands.add_parser(
        "generate-config", parents=[common], allow_abbrev=False,
        help="write the resolved settings (without secrets) to a YAML file",
    )
    generate.add_argument("--path", type=Path, required=True, help="file to write")
    generate.add_argument("--force", action="store_true", help="overwrite without asking")
    generate.set_defaults(command=_generate_config)
    return parser


def _up(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from mlex_tomo.stack.supervisor import StartupError, run_up

    try:
        return run_up(settings)
    except StartupError as error:
        print(f"mlex-tomo: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _ingester(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from ingester.service import run_ingester

    return run_ingester(settings)


def _ingest(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from ingester.errors import Rejected, TiledUnavailable
    from ingester.messages import IngestMessage
    from ingester.processor import Processor

    path = Path(arguments.path).expanduser().absolute()
    try:
        outcome = Processor(settings).process(IngestMessage(filePath=str(path)))
    except (Rejected, TiledUnavailable) as error:
        print(f"mlex-tomo: not ingested: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{outcome.kind}: {outcome.detail}")
    return EXIT_OK


def _status(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from mlex_tomo.stack.health import stack_health

    report = stack_health(settings)
    width = max(len(health.service) for health in report)
    for health in report:
        state = "up  " if health.healthy else "DOWN"
        detail = f"  ({health.detail})" if health.detail else ""
        print(f"{health.service:<{width}}  {state}  {health.url}{detail}")
    return EXIT_OK if all(health.healthy for health in report) else EXIT_FAILURE


def _generate_config(settings: StackSettings, arguments: argparse.Namespace) -> int:
    path: Path = arguments.path
    if path.exists() and not arguments.force:
        if not sys.stdin.isatty():
            print(f"mlex-tomo: {path} exists; pass --force to overwrite it", file=sys.stderr)
            return EXIT_FAILURE
        answer = input(f"{path} exists. Overwrite it? [y/N] ").strip().lower()
        if answer not in {"y", "yes"}:
            print("left unchanged")
            return EXIT_FAILURE
    header = (
        "# mlex-tomo settings (generated). Secrets are not written here: set them in the\n"
        "# environment (MLEX_TOMO_TILED__API_KEY, ...) or point *_file settings at files.\n"
    )
    path.write_text(header + settings_as_yaml(settings))
    print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
