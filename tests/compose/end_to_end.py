"""`make test-compose`: the compose install, built and run as an operator would, then checked.

    python -m tests.compose.end_to_end [--keep]

Stages, each timed: base images (built from Debian's archive when no registry answers,
tests/compose/base_images.py) -> the app image (`podman-compose build`) and the job
image (`podman build -f segmentation/Containerfile`) -> plain `podman-compose up -d`
(profile `cpu`) -> every service healthy (podman 4.3 runs no health checks by itself,
so this runs them) -> `mlex-tomo check` inside the worker container, whose segmentation
job must run in a container of the built job image -> no secret in any service's log
-> `podman-compose down`.

It uses a `.env` of its own (random secrets, free host ports, a temporary data folder
prepared as the operator guide says) and podman's Docker API on a socket of its own,
served by `podman system service` as on a host without systemd.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.compose.base_images import build_offline_base_images, registry_reachable
from tests.services import free_ports

REPOSITORY = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPOSITORY / "tests" / "podman" / "containers.conf"
APP_IMAGE = "localhost/mlex-tomo:latest"
JOB_IMAGE = "localhost/mlex-tomo-segmentation:latest"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APP_UID = 1000
SERVICES = ("broker", "postgres", "tiled", "prefect-server", "worker", "ingester", "ui")
HEALTHY_WITHIN_SECONDS = 600
CHECK_TIMEOUT_SECONDS = 1800
HOST_PORT_VARIABLES = (
    "TILED_HOST_PORT", "PREFECT_HOST_PORT", "UI_HOST_PORT",
    "BROKER_STOMP_HOST_PORT", "BROKER_OPENWIRE_HOST_PORT", "BROKER_CONSOLE_HOST_PORT",
)


class StageFailed(RuntimeError):
    pass


class Stages:
    """Prints each stage's time as it ends, and all of them at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - started
            print(f"== {name}: {self.seconds[name]:.1f} s", flush=True)

    def summary(self) -> str:
        return "\n".join(f"  {name:<40} {seconds:8.1f} s" for name, seconds in self.seconds.items())


def podman_compose() -> str:
    beside_python = Path(sys.executable).with_name("podman-compose")
    return str(beside_python) if beside_python.exists() else shutil.which("podman-compose") or "podman-compose"


def run(arguments: list[str], *, timeout: float, environment: dict[str, str], capture: bool = False) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        arguments, cwd=REPOSITORY, env=environment, timeout=timeout, check=False, text=True,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout or "").splitlines()[-40:])
        raise StageFailed(f"{' '.join(arguments[:4])} ... exited {completed.returncode}\n{tail}")
    return completed


def write_env_file(work: Path, data_dir: Path, docker_socket: Path, images: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """.env.example with its placeholders, paths, ports and images replaced: (the file, its values)."""
    values: dict[str, str] = {}
    for line in (REPOSITORY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name] = secrets.token_hex(16) if value == "change-me" else value
    values |= {
        "COMPOSE_PROFILES": "cpu",
        "MLEX_TOMO_DATA_DIR": str(data_dir),
        "DOCKER_SOCKET": str(docker_socket),
        "DOCKER_GID": "0",
        "MLEX_TOMO_JOBS__IMAGE": JOB_IMAGE,
        "APP_IMAGE": APP_IMAGE,
    }
    values |= dict(zip(HOST_PORT_VARIABLES, (str(port) for port in free_ports(len(HOST_PORT_VARIABLES))), strict=True))
    values["MLEX_TOMO_PREFECT__PUBLIC_UI_URL"] = f"http://localhost:{values['PREFECT_HOST_PORT']}"
    values["MLEX_TOMO_UI__PUBLIC_URL"] = f"http://localhost:{values['UI_HOST_PORT']}"
    values |= {name: image for name, image in images.items() if name in values}
    env_file = work / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    env_file.chmod(0o600)
    return env_file, values


def prepare_data_dir(data_dir: Path, environment: dict[str, str]) -> None:
    """As the operator guide says: the folders, owned by the app user, recursively (in podman's user namespace when rootless)."""
    for relative in ("tiled_storage/recons", "tiled_storage/writable", "broker", "postgres"):
        (data_dir / relative).mkdir(parents=True, exist_ok=True)
    owner = f"{APP_UID}:{APP_UID}"
    command = ["chown", "-R", owner, str(data_dir)]
    run(command if os.geteuid() == 0 else ["podman", "unshare", *command], timeout=60, environment=environment)


@contextmanager
def docker_api_socket(work: Path, environment: dict[str, str], keep: bool) -> Iterator[Path]:
    """podman's Docker API as `podman system service` serves it without systemd; made group-accessible as the guide says.

    With `keep` it stays up after the run: the kept worker starts its jobs through it.
    """
    path = work / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{path}"], env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            if time.monotonic() > deadline or service.poll() is not None:
                raise StageFailed("podman system service did not create its socket")
            time.sleep(0.2)
        path.chmod(0o660)
        yield path
    finally:
        if keep:
            print(f"kept: podman system service (pid {service.pid}) on {path}")
        else:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(timeout=30)


def container_of(service: str, environment: dict[str, str]) -> str:
    listed = run(
        ["podman", "ps", "--all", "--filter", "label=com.docker.compose.project=mlex-tomo",
         "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}"],
        timeout=60, environment=environment, capture=True,
    ).stdout.split()
    if len(listed) != 1:
        raise StageFailed(f"expected one container of {service}, found {listed}")
    return listed[0]


def wait_until_healthy(environment: dict[str, str], stages: Stages) -> None:
    """podman 4.3 schedules no health checks without systemd: run each service's own until it passes."""
    containers = {service: container_of(service, environment) for service in SERVICES}
    started, pending = time.monotonic(), dict(containers)
    while pending:
        for service, container in list(pending.items()):
            state = subprocess.run(
                ["podman", "inspect", "--format", "{{.State.Status}}", container],
                env=environment, capture_output=True, text=True, check=False,
            ).stdout.strip()
            if state != "running":
                logs = subprocess.run(["podman", "logs", "--tail", "30", container], env=environment, capture_output=True, text=True, check=False)
                raise StageFailed(f"{service} is {state}, not running:\n{logs.stdout}{logs.stderr}")
            check = subprocess.run(["podman", "healthcheck", "run", container], env=environment, capture_output=True, text=True, check=False)
            if check.returncode == 0:
                del pending[service]
                stages.seconds[f"  {service} healthy after"] = time.monotonic() - started
                print(f"   {service} is healthy ({time.monotonic() - started:.0f} s)", flush=True)
        if pending and time.monotonic() - started > HEALTHY_WITHIN_SECONDS:
            raise StageFailed(f"not healthy within {HEALTHY_WITHIN_SECONDS} s: {', '.join(pending)}")
        time.sleep(3)


class JobImageWatch:
    """Records the image of every job container that runs while the check does."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment, self.images, self._stop = environment, set(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> JobImageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            listed = subprocess.run(
                ["podman", "ps", "--filter", "label=mlex-tomo.job-id", "--format", "{{.Image}}"],
                env=self.environment, capture_output=True, text=True, check=False,
            )
            self.images.update(listed.stdout.split())


def web_app_problems(values: dict[str, str]) -> list[str]:
    """The page as a browser gets it through the published port, with the login: it must load the viewer's scripts."""
    base = f"http://127.0.0.1:{values['UI_HOST_PORT']}"
    login = (values["MLEX_TOMO_UI__USERNAME"], values["MLEX_TOMO_UI__PASSWORD"])
    problems = []
    if httpx.get(base, timeout=30).status_code != 401:
        problems.append("the web app answers without the login")
    page = httpx.get(base, auth=login, timeout=30)
    for asset in ("viewer.js", "keyboard.js", "style.css"):
        link = re.search(rf'"(/assets/{re.escape(asset)}[^"]*)"', page.text)
        if link is None:
            problems.append(f"the web app's page does not load {asset}")
        elif httpx.get(base + link.group(1), auth=login, timeout=30).status_code != 200:
            problems.append(f"the web app does not serve {link.group(1)}")
    return problems


def secrets_in_logs(values: dict[str, str], environment: dict[str, str]) -> list[str]:
    secret_names = [name for name in values if name.endswith(("PASSWORD", "API_KEY"))]
    found = []
    for service in SERVICES:
        container = container_of(service, environment)
        logs = subprocess.run(["podman", "logs", container], env=environment, capture_output=True, text=True, check=False)
        for name in secret_names:
            if values[name] in logs.stdout + logs.stderr:
                found.append(f"{service}'s log holds {name}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compose.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up and its folder in place (prints where)")
    arguments = parser.parse_args(argv)
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_", "COMPOSE_"))}
    environment.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    compose = [podman_compose(), "--env-file"]
    stages = Stages()
    work = Path(tempfile.mkdtemp(prefix="mlex-tomo-compose-"))
    failure: str | None = None
    stack_started = False
    try:
        with stages.stage("base images"):
            images = {} if registry_reachable() else build_offline_base_images(report=lambda line: print(f"   {line}", flush=True))
        data_dir = work / "data"
        prepare_data_dir(data_dir, environment)
        with docker_api_socket(work, environment, arguments.keep) as docker_socket:
            env_file, values = write_env_file(work, data_dir, docker_socket, images)
            compose.append(str(env_file))
            with stages.stage("app image (podman-compose build)"):
                run([*compose, "build"], timeout=3600, environment=environment)
            with stages.stage("job image (podman build)"):
                job_base = ["--build-arg", f"BASE_IMAGE={images['JOB_BASE_IMAGE']}"] if images else []
                run(
                    ["podman", "build", "--file", "segmentation/Containerfile", "--tag", JOB_IMAGE,
                     "--secret", f"id=pip-ca,src={values.get('PIP_CA_BUNDLE', CA_BUNDLE)}", *job_base, "."],
                    timeout=3600, environment=environment,
                )
            with stages.stage("podman-compose up -d"):
                stack_started = True
                run([*compose, "up", "-d"], timeout=600, environment=environment)
            with stages.stage("every service healthy"):
                wait_until_healthy(environment, stages)
            with stages.stage("mlex-tomo check in the worker"), JobImageWatch(environment) as watch:
                run([*compose, "exec", "worker", "mlex-tomo", "check"], timeout=CHECK_TIMEOUT_SECONDS, environment=environment)
            job_image_id = run(["podman", "image", "inspect", "--format", "{{.Id}}", JOB_IMAGE], timeout=60, environment=environment, capture=True).stdout.strip()
            if not watch.images & {JOB_IMAGE, job_image_id, job_image_id[:12]}:
                raise StageFailed(f"no job container of {JOB_IMAGE} was seen; job containers seen: {sorted(watch.images) or 'none'}")
            print(f"   the job ran in {JOB_IMAGE}", flush=True)
            web_app = web_app_problems(values)
            if web_app:
                raise StageFailed("; ".join(web_app))
            print("   the web app serves its page with its scripts and style", flush=True)
            leaks = secrets_in_logs(values, environment)
            if leaks:
                raise StageFailed("; ".join(leaks))
            print("   no password or key in any service's log", flush=True)
            if not arguments.keep:
                with stages.stage("podman-compose down"):
                    run([*compose, "down"], timeout=600, environment=environment)
                stack_started = False
    except (StageFailed, subprocess.TimeoutExpired) as error:
        failure = str(error)
    finally:
        if stack_started and not arguments.keep:
            subprocess.run([*compose, "down"], cwd=REPOSITORY, env=environment, timeout=600, check=False)
        if arguments.keep:
            print(f"kept: {work} (.env, data); stop with {' '.join(compose)} down")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("stage times:\n" + stages.summary())
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
