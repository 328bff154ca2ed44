"""The `mlex-tomo` command.

Any setting can be overridden after the command with its dotted name, for example
`mlex-tomo up --tiled.port 8001 --prefect.worker_query_seconds 2`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlex_tomo.settings import (
    SettingsError,
    StackSettings,
    load_settings,
    parse_dotted_overrides,
    settings_as_yaml,
)
from mlex_tomo.tiled_layout import node_uri
from mlex_tomo.tiled_names import RECONS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, then = _split_at_double_dash(argv)
    arguments, extra = parser.parse_known_args(argv)
    if arguments.command is _wait_for:
        if not then:
            parser.error("wait-for: give the command to run after --, e.g. mlex-tomo wait-for tiled:8000 -- mlex-tomo ui")
        arguments.then = then
    elif then:
        parser.error("only wait-for takes a command after --")
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

    def add_command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, parents=[common], allow_abbrev=False, help=help)
        command.set_defaults(command=handler)
        return command

    up = add_command("up", _up, "start the whole stack on this machine and keep it running until Ctrl-C")
    up.add_argument("--broker-url", help="use this broker (stomp://host:port) instead of starting one")

    add_command("status", _status, "report each service's health; exit 1 if any is down")
    add_command("deploy", _deploy, "register the flows' deployments (and the work pool) on the Prefect server")
    add_command("worker", _worker, "remove what a crashed worker left on this host, then run a Prefect worker for the work pool with this stack's settings and secrets")
    add_command("ingester", _ingester, "listen on the broker and register announced reconstructions in Tiled")
    add_command("ui", _ui, "serve the segmentation web app (port 8075 by default)")

    ingest = add_command("ingest", _ingest, "register one reconstruction file or folder by hand, as if announced")
    ingest.add_argument("path", help="the file (NeXus/HDF5, Zarr, TIFF) or TIFF stack folder")

    dead_letters = add_command(
        "dead-letters", _dead_letters,
        "list what the ingester could not ingest (dead-letter queue and parked messages), with the reasons",
    )
    dead_letters.add_argument("--replay", action="store_true", help="publish them all to the ingest destination again, once the cause is fixed")

    simulate = add_command(
        "simulate-scan", _simulate_scan,
        "write a synthetic reconstruction under the recons root and announce it, as a reconstruction program would",
    )
    simulate.add_argument("--name", required=True, help="scan name (letters, digits, - _ .)")
    simulate.add_argument("--size", type=_shape, default=(128, 128, 128), help="N for N^3, or Z,Y,X (default 128)")
    simulate.add_argument("--format", default="savu", help="savu (default), nxtomo, hdf5, zarr2, zarr3, tiff-stack, tiff-multipage")
    simulate.add_argument("--dtype", default="float32", choices=["float32", "uint16", "uint8"])
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--realistic", action="store_true", help="simulate projections and reconstruct them (noise, rings)")
    simulate.add_argument("--no-tiff-saver", action="store_true", help="savu format without the TiffSaver folder")
    simulate.add_argument("--overwrite", action="store_true", help="replace a scan of the same name")
    simulate.add_argument("--no-announce", action="store_true", help="write the files only")
    simulate.add_argument("--wait", type=float, default=30.0, help="seconds to wait until Tiled serves it (0: do not wait)")

    demo = add_command(
        "demo", _demo,
        "on a running stack: simulate a scan, paint sparse labels, train and segment through Prefect, print the IoU",
    )
    _add_loop_arguments(demo, default_scan=f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    demo.add_argument("--keep", action=argparse.BooleanOptionalAction, default=True, help="keep what the demo created (default: keep)")

    check = add_command(
        "check", _check,
        "acceptance test of a running deployment: the demo's loop, asserted; removes what it created; exit 1 on failure",
    )
    _add_loop_arguments(check, default_scan=f"check-{time.strftime('%Y%m%d-%H%M%S')}")
    check.add_argument("--url", help="the web app to check (default: ui.host and ui.port from the settings)")
    check.add_argument("--min-iou", type=float, default=0.8, help="lowest acceptable mean IoU (default 0.8)")
    check.add_argument("--keep", action=argparse.BooleanOptionalAction, default=False, help="keep what the check created (default: remove it)")

    wait = add_command(
        "wait-for", _wait_for,
        "wait until each target answers (host:port, a stomp:// or postgresql:// URL, or an http:// URL that must return 200), "
        "then replace this process with the command after --",
    )
    wait.add_argument("targets", nargs="+", metavar="TARGET")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds to wait before giving up with exit 1 (default 300)")

    generate = add_command("generate-config", _generate_config, "write the resolved settings (without secrets) to a YAML file")
    generate.add_argument("--path", type=Path, required=True, help="file to write")
    generate.add_argument("--force", action="store_true", help="overwrite without asking")
    return parser


def _split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def _add_loop_arguments(command: argparse.ArgumentParser, default_scan: str) -> None:
    command.add_argument("--scan", default=default_scan, help=f"name of the simulated scan (default {default_scan.split('-')[0]}-<time>)")
    command.add_argument("--size", type=int, default=96, help="edge of the cubic phantom in voxels (default 96)")
    command.add_argument("--labelled-slices", type=int, default=3, help="slices with painted scribbles (default 3)")
    command.add_argument("--model", default="RandomForest", help="RandomForest (default), MSDNet, TUNet or TUNet3+")
    command.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    command.add_argument("--launcher", help="process, podman, docker or slurm (default: the worker's jobs.launcher)")
    command.add_argument(
        "--via", default="broker",
        help="broker (default): write a file under the recons root and announce it; tiled: upload it through Tiled",
    )
    command.add_argument("--timeout", type=float, default=900.0, help="seconds each of ingest and segment may take")


def _run_loop(settings: StackSettings, arguments: argparse.Namespace):
    """The loop as `demo` and `check` run it, its summary printed: (record, the error or None), or None for invalid options."""
    from pydantic import ValidationError

    from flows.demo import LoopFailed, LoopOptions, LoopRecord, run_loop
    from mlex_tomo.validation import validation_problems

    try:
        options = LoopOptions(
            scan=arguments.scan, size=arguments.size, labelled_slices=arguments.labelled_slices, model=arguments.model,
            device=arguments.device, launcher=arguments.launcher, via=arguments.via, timeout_seconds=arguments.timeout,
        )
    except ValidationError as error:
        problems = "; ".join(validation_problems(error, field_name=_option_name))
        print(f"mlex-tomo: {problems}", file=sys.stderr)
        return None
    record, failure = LoopRecord(scan=options.scan), None
    try:
        run_loop(settings, options, record, report=lambda line: print(line, flush=True))
    except LoopFailed as error:
        failure = error
    _print_summary(record)
    return record, failure


def _option_name(location) -> str:
    return "--" + "-".join(str(part) for part in location).replace("_", "-")


def _print_summary(record) -> None:
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in record.seconds.items())
    print(f"stages: {stages}")
    if record.mean_iou is not None:
        per_class = ", ".join(f"{iou:.3f}" for iou in record.class_iou)
        print(f"mean IoU against the ground truth: {record.mean_iou:.3f} (per class: {per_class})")


def _demo(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from flows.demo import clean_up

    outcome = _run_loop(settings, arguments)
    if outcome is None:
        return EXIT_USAGE
    record, error = outcome
    if not arguments.keep:
        for problem in clean_up(settings, record):
            print(f"mlex-tomo: could not remove {problem}", file=sys.stderr)
    if error is not None:
        print(f"mlex-tomo: demo failed at {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"open {settings.ui.browser_url} and pick {record.scan} to see the labels over the slices")
    return EXIT_OK


def _check(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from flows.demo import clean_up, web_app_problems

    outcome = _run_loop(settings, arguments)
    if outcome is None:
        return EXIT_USAGE
    record, error = outcome
    failures = [f"{error}"] if error is not None else []
    if error is None:
        if record.mean_iou is None or record.mean_iou < arguments.min_iou:
            failures.append(f"mean IoU {record.mean_iou} is below --min-iou {arguments.min_iou}")
        failures += web_app_problems(settings, arguments.url or settings.ui.url, record)
    if not arguments.keep:
        failures += [f"left behind: {problem}" for problem in clean_up(settings, record)]
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("PASS" if not failures else f"FAILED ({len(failures)} problems)")
    return EXIT_OK if not failures else EXIT_FAILURE


def _up(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from stack.supervisor import StartupError, run_up

    try:
        return run_up(settings)
    except StartupError as error:
        print(f"mlex-tomo: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _deploy(settings: StackSettings, arguments: argparse.Namespace) -> int:
    import httpx

    from flows.deploy import register_deployments

    api_url = settings.prefect.resolved_api_url
    try:
        names = register_deployments(settings)
    except (httpx.HTTPError, RuntimeError) as error:
        print(f"mlex-tomo: cannot register deployments at {api_url}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for name in names:
        print(f"deployed {name} on work pool {settings.prefect.work_pool} at {api_url}")
    return EXIT_OK


def _worker(settings: StackSettings, arguments: argparse.Namespace) -> int:
    """Removes what a crashed worker left, then replaces this process with Prefect's worker, so signals reach it directly."""
    from flows.leftovers import clean_up_leftovers
    from stack.services import prefect_worker_command, worker_environment, write_child_settings

    write_child_settings(settings)
    for removed in clean_up_leftovers():
        print(f"removed what a crashed worker left: {removed}", flush=True)
    command = prefect_worker_command(settings)
    os.execve(command[0], command, {**os.environ, **worker_environment(settings)})


def _wait_for(settings: StackSettings, arguments: argparse.Namespace) -> int:
    """Replaces this process with the command once its services answer, so that signals reach it directly."""
    from stack.waiting import Target, WaitTimedOut, wait_for

    try:
        targets = [Target.parse(text) for text in arguments.targets]
        wait_for(targets, arguments.timeout, report=lambda line: print(f"mlex-tomo wait-for: {line}", flush=True))
    except (ValueError, WaitTimedOut) as error:
        print(f"mlex-tomo wait-for: {error}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        os.execvp(arguments.then[0], arguments.then)
    except OSError as error:
        print(f"mlex-tomo wait-for: cannot run {arguments.then[0]!r}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE


def _ui(settings: StackSettings, arguments: argparse.Namespace) -> int:
    """Serve under gunicorn until SIGTERM (a short grace for requests in flight) or SIGINT."""
    from stack.web_server import WebAppServer

    WebAppServer(settings).run()
    return EXIT_OK


def _ingester(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from ingester.service import run_ingester

    return run_ingester(settings)


def _ingest(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from ingester.errors import Rejected, TiledUnavailable
    from ingester.messages import IngestMessage
    from ingester.processor import Processor

    path = Path(arguments.path).expanduser().absolute()
    try:
        with Processor(settings) as processor:
            outcome = processor.process(IngestMessage(filePath=str(path)))
    except (Rejected, TiledUnavailable) as error:
        print(f"mlex-tomo: not ingested: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{outcome.kind}: {outcome.detail}")
    return EXIT_OK


def _dead_letters(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from ingester.dead_letters import list_dead_letters, replay_dead_letters

    if arguments.replay:
        print(f"replayed {replay_dead_letters(settings)} message(s) to {settings.ingester.destination}")
        return EXIT_OK
    found = list_dead_letters(settings)
    for letter in found:
        body = letter.body if len(letter.body) <= 200 else letter.body[:200] + "..."
        print(f"{letter.where}: {letter.reason}\n    {body}")
    print(f"{len(found)} message(s) not ingested; fix the cause, then: mlex-tomo dead-letters --replay")
    return EXIT_OK


def _shape(text: str) -> tuple[int, int, int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or Z,Y,X, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"expected N or Z,Y,X, got {text!r}")
    return tuple(sizes)


def _simulate_scan(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mlex_tomo.announce import announce
    from mlex_tomo.phantom import PhantomSpec
    from mlex_tomo.scan_simulator import simulate_scan
    from mlex_tomo.tomography import AcquisitionParameters

    try:
        spec = PhantomSpec(shape=arguments.size, seed=arguments.seed, dtype=arguments.dtype)
        scan = simulate_scan(
            settings.recons_path,
            settings.data_path / "ground_truth",
            arguments.name,
            spec,
            arguments.format,
            realistic=AcquisitionParameters(seed=arguments.seed) if arguments.realistic else None,
            tiff_saver=not arguments.no_tiff_saver,
            overwrite=arguments.overwrite,
        )
    except (ValueError, ValidationError) as error:
        print(f"mlex-tomo: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {scan.announce_path} ({scan.file_format}, {scan.shape}, {scan.dtype})")
    print(f"ground truth: {scan.ground_truth_path}")
    if arguments.no_announce:
        return EXIT_OK
    announced_at = time.monotonic()
    try:
        announce(settings, scan.announce_path, beamline="simulated", scanId=arguments.name)
    except Exception as error:  # stomp.py raises several unrelated types for "no broker"
        print(f"mlex-tomo: could not announce on {settings.broker.stomp_address}: {error!r}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"announced on {settings.ingester.destination}")
    if arguments.wait <= 0:
        return EXIT_OK
    node = _wait_until_served(settings, arguments.name, scan.announce_path, arguments.wait)
    if node is None:
        print(f"mlex-tomo: not served by Tiled after {arguments.wait:g} s; is the ingester running?", file=sys.stderr)
        return EXIT_FAILURE
    elapsed = time.monotonic() - announced_at
    print(f"browsable at {node_uri(settings, f'{RECONS}/{node}')} {elapsed:.2f} s after the announcement")
    return EXIT_OK


def _wait_until_served(settings: StackSettings, name: str, path: Path, timeout: float) -> str | None:
    """The scan's name once Tiled serves it from this file, or None after `timeout` seconds."""
    from mlex_tomo.tiled_http import TiledError
    from mlex_tomo.tiled_layout import connect_http

    deadline = time.monotonic() + timeout
    with connect_http(settings) as tiled:
        while time.monotonic() < deadline:
            try:
                if tiled.node(f"{RECONS}/{name}").metadata.get("source_path") == str(path.resolve()):
                    return name
            except TiledError:
                pass  # not registered yet, or Tiled busy: ask again
            time.sleep(0.05)
    return None


def _status(settings: StackSettings, arguments: argparse.Namespace) -> int:
    from mlex_tomo.health import stack_health

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
