"""The compose install: docker-compose.yml, .env.example and the Containerfiles agree with
each other, with the settings model and with the repository. Nothing is pulled or built."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from mlex_tomo.settings import ENV_PREFIX, StackSettings, load_settings

REPOSITORY = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
ENV_EXAMPLE = REPOSITORY / ".env.example"
APP_IMAGE = "localhost/mlex-tomo:latest"
# The variables an app service may be given: our settings and the tools' own that
# load_settings reads (docs/configuration.md).
TOOL_VARIABLES = {"PREFECT_API_URL", "TILED_API_KEY"}
SECRET_NAME = re.compile(r"(^|_)(KEY|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIALS?)($|_)")
PLACEHOLDER = "change-me"
COMPOSE_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def podman_compose() -> str:
    beside_python = Path(sys.executable).with_name("podman-compose")
    found = str(beside_python) if beside_python.exists() else shutil.which("podman-compose")
    assert found, "podman-compose is a dependency in pyproject.toml; install the project"
    return found


def resolved_config(*profiles: str) -> dict:
    """`podman-compose config` with .env.example's values; --dry-run needs no podman."""
    arguments = [podman_compose(), "--dry-run", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE)]
    for profile in profiles:
        arguments += ["--profile", profile]
    # Only .env.example may supply values: the caller's own variables would win over it.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    completed = subprocess.run(
        arguments + ["config"], check=False, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    return yaml.safe_load(completed.stdout)


@cache
def full_config() -> dict:
    return resolved_config("cpu", "gpu")


@cache
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> list[tuple[str, str, str]]:
    """(name, value, the comment line above it) for each assignment in .env.example."""
    entries, previous = [], ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, separator, value = stripped.partition("=")
            assert separator, f".env.example: not NAME=value: {line!r}"
            entries.append((name, value, previous))
        previous = stripped
    return entries


def app_services(config: dict) -> dict[str, dict]:
    return {name: service for name, service in config["services"].items() if service.get("image") == APP_IMAGE}


def test_compose_config_validates_with_the_example_env_and_names_every_service():
    config = full_config()
    assert set(config["services"]) == set(raw_compose()["services"])
    assert {"broker", "postgres", "tiled", "prefect-server", "worker", "worker-gpu", "ingester", "ui"} <= set(config["services"])


def test_the_example_env_starts_exactly_one_worker():
    """Two workers on the one work pool would let a GPU run land on the CPU worker."""
    workers = {name for name in resolved_config()["services"] if name.startswith("worker")}
    assert workers == {"worker"}
    profiles = {name: raw_compose()["services"][name].get("profiles") for name in ("worker", "worker-gpu")}
    assert profiles == {"worker": ["cpu"], "worker-gpu": ["gpu"]}


def test_app_services_get_only_real_settings_with_valid_values():
    for name, service in app_services(full_config()).items():
        environment = {key: str(value) for key, value in service.get("environment", {}).items()}
        ours = {key: value for key, value in environment.items() if key.startswith(ENV_PREFIX) or key in TOOL_VARIABLES}
        settings = load_settings(environ=ours)  # raises on an unknown MLEX_TOMO_* name or a bad value
        if "MLEX_TOMO_TILED__URL" in ours:
            assert settings.tiled.base_url == f"http://tiled:{StackSettings().tiled.port}", name
        if "PREFECT_API_URL" in ours:
            assert settings.prefect.resolved_api_url == f"http://prefect-server:{StackSettings().prefect.port}/api", name


def test_every_mlex_tomo_variable_of_the_example_env_is_a_real_setting():
    ours = {name: value for name, value, _ in env_example() if name.startswith(ENV_PREFIX)}
    assert ours, ".env.example sets no MLEX_TOMO_* variable"
    load_settings(environ=ours)


def test_the_worker_launches_jobs_on_the_compose_network_with_gpus_only_in_the_gpu_profile():
    config = full_config()
    network = config["networks"]["default"]["name"]
    for name, gpus in (("worker", "none"), ("worker-gpu", "all")):
        service = config["services"][name]
        environment = {key: str(value) for key, value in service["environment"].items()}
        jobs = load_settings(environ=environment).jobs
        assert (jobs.launcher, jobs.container_network, jobs.gpus) == ("docker", network, gpus), name
        assert any(volume.endswith(":/var/run/docker.sock") for volume in service["volumes"]), name
    devices = config["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_published_ports_are_the_settings_defaults_and_movable_from_the_env():
    defaults = StackSettings()
    expected = {
        "tiled": {defaults.tiled.port},
        "prefect-server": {defaults.prefect.port},
        "ui": {defaults.ui.port},
        "broker": {defaults.broker.stomp_port, defaults.broker.openwire_port, 8161},
    }
    published = {}
    for name, service in full_config()["services"].items():
        for mapping in service.get("ports", []):
            host, _, container = str(mapping).partition(":")
            assert host == container, f"{name} publishes {mapping}: keep the documented port inside and out by default"
            published.setdefault(name, set()).add(int(host))
    assert published == expected
    for name, service in raw_compose()["services"].items():
        for mapping in service.get("ports", []):
            host, _, container = str(mapping).rpartition(":")
            assert re.fullmatch(r"\$\{[A-Z_]+_HOST_PORT:-" + container + r"\}", host), f"{name}: {mapping}: let .env move the host port"
    commands = {name: full_config()["services"][name]["command"] for name in ("tiled", "prefect-server")}
    assert commands["tiled"][commands["tiled"].index("--port") + 1] == str(defaults.tiled.port)
    assert commands["prefect-server"][commands["prefect-server"].index("--port") + 1] == str(defaults.prefect.port)


def test_the_ui_serves_the_network_on_its_port_and_logs_in():
    service = full_config()["services"]["ui"]
    settings = load_settings(environ={key: str(value) for key, value in service["environment"].items() if key.startswith(ENV_PREFIX)})
    assert settings.ui.host == "0.0.0.0" and settings.ui.login_required and settings.ui.port == StackSettings().ui.port
    assert service["command"][service["command"].index("--") + 1 :] == ["mlex-tomo", "ui"]  # gunicorn (stack/web_server.py)


def test_the_worker_can_run_check_and_demo_against_the_stack():
    """`compose exec worker mlex-tomo check` needs the broker login, the web app's address and its login."""
    for name in ("worker", "worker-gpu"):
        environment = {key: str(value) for key, value in full_config()["services"][name]["environment"].items()}
        settings = load_settings(environ=environment)
        assert settings.broker.url == "stomp://broker:61613" and settings.broker.password is not None, name
        assert settings.ui.url == f"http://ui:{StackSettings().ui.port}" and settings.ui.login_required, name
        # What demo and check print for people to open: addresses a browser reaches, not service names.
        assert settings.ui.browser_url == "http://localhost:8075" and settings.prefect.ui_url == "http://localhost:4200", name


def test_prefect_survives_a_slow_database():
    environment = full_config()["services"]["prefect-server"]["environment"]
    assert float(environment["PREFECT_API_DATABASE_TIMEOUT"]) >= 30
    assert float(environment["PREFECT_API_DATABASE_CONNECTION_TIMEOUT"]) >= 15


def test_every_compose_variable_is_in_the_example_env_exactly_once_and_vice_versa():
    referenced = set(COMPOSE_REFERENCE.findall(COMPOSE_FILE.read_text()))
    names = [name for name, _, _ in env_example()]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"listed more than once in .env.example: {duplicates}"
    assert referenced - set(names) == set(), "used in docker-compose.yml, missing from .env.example"
    # COMPOSE_* variables are read by Compose itself (COMPOSE_PROFILES picks the worker).
    unused = {name for name in set(names) - referenced if not name.startswith("COMPOSE_")}
    assert unused == set(), "listed in .env.example, unused by docker-compose.yml"


def test_the_example_env_explains_each_variable_and_holds_no_secret():
    for name, value, comment in env_example():
        assert comment.startswith("# "), f"{name} has no comment line above it in .env.example"
        if SECRET_NAME.search(name):
            assert value == PLACEHOLDER, f"{name} in .env.example must be the placeholder {PLACEHOLDER!r}"


def test_the_tiled_service_sets_every_variable_its_config_expands():
    lines = (REPOSITORY / "tiled_config" / "config.yml").read_text().splitlines()
    settings_lines = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    expanded = set(COMPOSE_REFERENCE.findall(settings_lines))
    environment = full_config()["services"]["tiled"]["environment"]
    assert expanded and expanded <= set(environment)
    assert environment["MLEX_TILED_CATALOG_URI"].startswith("postgresql+asyncpg://")


def wait_targets(service: dict) -> list[str]:
    command = service.get("command") or []
    if command[:2] != ["mlex-tomo", "wait-for"]:
        return []
    return [word for word in command[2 : command.index("--")] if not word.startswith("--")]


def test_each_service_waits_for_the_servers_it_needs_itself():
    """podman 4.3's podman-compose ignores depends_on conditions, so no service relies on them."""
    from stack.waiting import Target

    services = full_config()["services"]
    for name, service in services.items():
        assert "restart" not in service, f"{name}: a restart policy hides a failed start"
        assert not service.get("depends_on"), f"{name}: wait in the command (mlex-tomo wait-for), not with depends_on"
    for name, service in app_services(full_config()).items():
        waited = {Target.parse(target).host for target in wait_targets(service)}
        needed = set()
        for variable, value in service.get("environment", {}).items():
            if variable == "MLEX_TOMO_BROKER__URL" and name != "ingester":
                continue  # the web app reports the broker's state; the worker's `check` announces on it
            match = re.search(r"://(?:[^@/]*@)?([A-Za-z0-9.-]+):\d+", str(value))
            if match and "PUBLIC" not in variable:  # addresses for people's browsers, not for this service
                needed.add(match.group(1))
        assert needed, f"{name} talks to no server?"
        assert needed <= waited, f"{name} does not wait for {needed - waited}"
        assert not any("@" in target for target in wait_targets(service)), f"{name}: a password in a command line"


def test_python_snippets_in_the_compose_file_import_what_exists():
    """The health checks run Python from the compose file: keep it in step with the code."""
    snippets = []
    for service in full_config()["services"].values():
        for command in (service.get("command"), service.get("healthcheck", {}).get("test")):
            if command and "python" in command and "-c" in command:
                snippets.append(command[command.index("-c") + 1])
    assert len(snippets) >= 2
    for snippet in snippets:
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
                assert not missing, f"{node.module} has no {missing}"


def build_arguments() -> dict[str, str]:
    """The app image's build args; podman-compose prints them as NAME=value lines."""
    arguments = full_config()["services"]["tiled"]["build"]["args"]
    return arguments if isinstance(arguments, dict) else dict(line.split("=", 1) for line in arguments)


def test_the_app_image_is_built_once_and_every_image_can_be_chosen_in_the_env():
    raw = raw_compose()["services"]
    built = [name for name, service in raw.items() if "build" in service]
    assert built == ["tiled"], f"one service builds the app image, the others run it by name: {built}"
    for name, service in raw.items():
        assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]+\}", service["image"]), f"{name}: image {service['image']} is not a ${{VAR:-default}}"
    build = full_config()["services"]["tiled"]["build"]
    assert {"PYTHON_IMAGE", "DOCKER_CLI_IMAGE", "PIP_INDEX_URL"} <= set(build_arguments()) and build["secrets"] == ["pip-ca"]


def test_images_are_pinned():
    for name, service in full_config()["services"].items():
        image = service["image"]
        if image == APP_IMAGE:
            continue  # built here
        tag = image.rpartition(":")[2]
        assert re.search(r"\d", tag) and tag != "latest", f"{name}: pin {image} to a version"
    for argument, image in build_arguments().items():
        if argument.endswith("_IMAGE"):
            tag = image.rpartition(":")[2]
            assert re.search(r"\d", tag) and tag != "latest", f"{argument}: pin {image} to a version"


# --- Containerfiles --------------------------------------------------------------------

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
CONTAINERFILES = ["Containerfile", "segmentation/Containerfile"]


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


def parse_containerfile(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions, pending, start = [], "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def arguments_of(instruction: Instruction) -> list[str]:
    """Exec (JSON array) or shell form, as words."""
    if instruction.arguments.startswith("["):
        return json.loads(instruction.arguments)
    return shlex.split(instruction.arguments)


def variables_of(instruction: Instruction) -> dict[str, str | None]:
    """ENV name=value pairs (or the legacy `ENV name value`); ARG name[=default]."""
    words = shlex.split(instruction.arguments)
    if instruction.keyword == "ENV" and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    values: dict[str, str | None] = {}
    for word in words:
        name, separator, value = word.partition("=")
        values[name] = value if separator else None
    return values


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerignore_patterns() -> list[str]:
    lines = (REPOSITORY / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.lstrip().startswith(("#", "!"))]


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfile_parses_and_starts_from_a_base_image(name):
    instructions = parse_containerfile(REPOSITORY / name)
    unknown = [f"line {i.line}: {i.keyword}" for i in instructions if i.keyword not in INSTRUCTIONS]
    assert not unknown, f"{name}: unknown instructions {unknown}"
    first = next(i for i in instructions if i.keyword != "ARG")
    assert first.keyword == "FROM", f"{name}: the first instruction after ARGs is {first.keyword}"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_pip_takes_the_index_and_the_ca_bundle_from_the_build(name):
    """Behind a TLS-intercepting proxy: a build secret both docker (BuildKit) and podman accept, kept out of the image."""
    instructions = parse_containerfile(REPOSITORY / name)
    installs = [i for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert installs
    for install in installs:
        assert install.arguments.startswith("--mount=type=secret,id=pip-ca "), f"{name} line {install.line}"
        assert "PIP_CERT=/run/secrets/pip-ca" in install.arguments
    stage_arguments = [set(variables_of(i)) for stage in stages(instructions) for i in stage if i.keyword == "ARG"]
    assert any("PIP_INDEX_URL" in names for names in stage_arguments), f"{name}: PIP_INDEX_URL is not an ARG of the build stage"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfile_runs_as_a_non_root_user(name):
    final_stage = stages(parse_containerfile(REPOSITORY / name))[-1]
    users = [i.arguments.split(":")[0] for i in final_stage if i.keyword == "USER"]
    assert users, f"{name}: the image has no USER"
    assert users[-1] not in {"root", "0"}, f"{name}: the image runs as {users[-1]}"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfile_bakes_in_no_secret(name):
    for instruction in parse_containerfile(REPOSITORY / name):
        if instruction.keyword in {"ENV", "ARG"}:
            for variable, value in variables_of(instruction).items():
                assert not (SECRET_NAME.search(variable.upper()) and value), (
                    f"{name} line {instruction.line}: {variable} looks like a secret; pass it at run time"
                )


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfile_copies_only_what_the_build_context_holds(name):
    """Both images build with the repository root as context (see their headers)."""
    ignored = dockerignore_patterns()
    for instruction in parse_containerfile(REPOSITORY / name):
        if instruction.keyword not in {"COPY", "ADD"}:
            continue
        words = arguments_of(instruction)
        if any(word.startswith("--from") for word in words):
            continue  # copies from another stage or image, not from the context
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, f"{name} line {instruction.line}: {instruction.keyword} without a source"
        for source in sources:
            relative = source.rstrip("/")
            assert (REPOSITORY / relative).exists(), f"{name} line {instruction.line}: {source} does not exist"
            parts = Path(relative).parts
            prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
            excluded = [p for p in ignored for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
            assert not excluded, f"{name} line {instruction.line}: .dockerignore drops {source} ({excluded})"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_containerfile_base_images_are_pinned(name):
    instructions = parse_containerfile(REPOSITORY / name)
    defaults = {
        variable: value
        for instruction in instructions
        if instruction.keyword == "ARG"
        for variable, value in variables_of(instruction).items()
    }
    stage_names = set()
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        words = instruction.arguments.split()
        image = re.sub(r"\$\{(\w+)\}", lambda match: defaults.get(match.group(1)) or "", words[0])
        if image not in stage_names:
            tag = image.rpartition("/")[2].partition(":")[2]
            assert re.search(r"\d", tag) and tag != "latest", f"{name}: pin {words[0]} ({image}) to a version"
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])


def test_app_image_serves_the_shipped_tiled_config_and_holds_no_torch():
    instructions = parse_containerfile(REPOSITORY / "Containerfile")
    workdir = [i.arguments for i in instructions if i.keyword == "WORKDIR"][-1]
    tiled_command = full_config()["services"]["tiled"]["command"]
    assert f"{workdir}/tiled_config/config.yml" in tiled_command
    dependencies = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(dependency.startswith("torch") for dependency in dependencies)
    assert not any("[segmentation" in i.arguments or "torch" in i.arguments for i in instructions if i.keyword == "RUN")


def test_the_installed_package_holds_the_files_the_services_read(tmp_path):
    """The app image runs the installed package, not the checkout: the web app's scripts and Tiled's config must be in it."""
    source = tmp_path / "source"  # a clean copy: a build/ folder left in the checkout would hide what is missing
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "data", "docs", "tests", "benchmarks"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("mlex_tomo-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {f"dash_app/assets/{path.name}" for path in (REPOSITORY / "dash_app" / "assets").iterdir()} | {"tiled_config/config.yml"}
    assert needed - names == set(), "missing from the wheel: add them to [tool.setuptools.package-data]"
