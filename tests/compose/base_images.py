"""Local stand-ins for the official base images of the compose install, built with podman.

Where no container registry can be reached (the CI and development VMs), the images that
docker-compose.yml and the Containerfiles start FROM cannot be pulled. This module builds
replacements from Debian packages alone: a Debian bookworm root made with debootstrap from
the host's own apt mirror, and on it one image per official base image. The compose install
is pointed at them only through its image variables (`NAME=image` lines, as in .env); the
official names are never re-tagged, so nothing can mistake a stand-in for the real image.

What each stand-in implements of its official image:

- PYTHON_IMAGE (python:3.11-slim-bookworm): Debian's Python 3.11 in a virtual environment at
  /opt/python, first on PATH, so `python` and `python -m pip` work without PEP 668 errors;
  bash, useradd, CA certificates, tzdata. As with the official image, pip trusts only the
  public CAs: builds behind a TLS-intercepting proxy pass the host's bundle as the build
  secret `pip-ca`, which is what the project's Containerfiles are tested for here.
- DOCKER_CLI_IMAGE (docker:28.2.2-cli): Debian's docker CLI 20.10 (Docker API 1.41, linked
  against glibc only) at /usr/local/bin/docker, enough to drive docker or podman sockets.
- BROKER_IMAGE (apache/activemq-classic:6.1.8): Debian's ActiveMQ 5.17 on Java 17, started
  in the foreground as root; OpenWire on 61616, STOMP on 61613; ACTIVEMQ_CONNECTION_USER and
  ACTIVEMQ_CONNECTION_PASSWORD become the only accepted login (unset: anyone may connect);
  KahaDB in /opt/apache-activemq/data. There is no web console on 8161 (Debian does not
  package it), so ACTIVEMQ_WEB_USER and ACTIVEMQ_WEB_PASSWORD are ignored.
- POSTGRES_IMAGE (postgres:16.10): Debian's PostgreSQL 15; the entry point initialises an
  empty /var/lib/postgresql/data from POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, runs
  /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh while listening on its socket only,
  then runs the server as Debian's postgres user (not uid 999: the data folder is chowned
  to it) on port 5432, with scram-sha-256 passwords for every TCP connection; pg_isready
  and psql are on PATH.
- JOB_BASE_IMAGE (pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime): the python stand-in with
  the CPU wheel of torch 2.13.0 and its dependencies (no CUDA, no conda, no numpy).

Run `python -m tests.compose.base_images [--rebuild]`; it prints the variables to use.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
IMAGES_DIRECTORY = Path(__file__).resolve().parent / "images"
CONTAINERS_CONF = REPOSITORY / "tests" / "podman" / "containers.conf"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
APT_SOURCE_FILES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
REGISTRY_URL = "https://registry-1.docker.io/v2/"

DEBIAN_SUITE = "bookworm"
DEBIAN_IMAGE = "localhost/mlex-tomo-offline/debian:bookworm"
OFFLINE_IMAGES: dict[str, str] = {
    "PYTHON_IMAGE": "localhost/mlex-tomo-offline/python:3.11-bookworm",
    "DOCKER_CLI_IMAGE": "localhost/mlex-tomo-offline/docker-cli:bookworm",
    "BROKER_IMAGE": "localhost/mlex-tomo-offline/activemq:5.17-bookworm",
    "POSTGRES_IMAGE": "localhost/mlex-tomo-offline/postgres:15-bookworm",
    "JOB_BASE_IMAGE": "localhost/mlex-tomo-offline/pytorch:2.13.0-cpu",
}
DEBIAN_IMAGE_CHANGES = (
    'CMD ["bash"]',
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
# As in Debian's official images: package installs start no services, and apt keeps no
# downloaded packages or package caches in image layers.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
APT_CACHE_REMOVAL = (
    "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
)
APT_CLEAN_SETTINGS = f"""\
DPkg::Post-Invoke {{ "{APT_CACHE_REMOVAL}"; }};
APT::Update::Post-Invoke {{ "{APT_CACHE_REMOVAL}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
"""
OUTPUT_LINES_ON_FAILURE = 40
COMMAND_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class ContainerfileImage:
    """An image built from tests/compose/images/<directory>, plus host files in its context."""

    image: str
    directory: str
    build_arguments: Mapping[str, str]
    context_files: Mapping[str, Path] = field(default_factory=dict)
    secrets: Mapping[str, Path] = field(default_factory=dict)


CONTAINERFILE_IMAGES = (
    ContainerfileImage(OFFLINE_IMAGES["PYTHON_IMAGE"], "python", {"DEBIAN_IMAGE": DEBIAN_IMAGE}),
    ContainerfileImage(OFFLINE_IMAGES["DOCKER_CLI_IMAGE"], "docker-cli", {"DEBIAN_IMAGE": DEBIAN_IMAGE}),
    ContainerfileImage(OFFLINE_IMAGES["BROKER_IMAGE"], "activemq", {"DEBIAN_IMAGE": DEBIAN_IMAGE}),
    ContainerfileImage(OFFLINE_IMAGES["POSTGRES_IMAGE"], "postgres", {"DEBIAN_IMAGE": DEBIAN_IMAGE}),
    ContainerfileImage(
        OFFLINE_IMAGES["JOB_BASE_IMAGE"],
        "pytorch",
        {"PYTHON_IMAGE": OFFLINE_IMAGES["PYTHON_IMAGE"]},
        {f"wheels/{TORCH_WHEEL.name}": TORCH_WHEEL},
        {"pip-ca": HOST_CA_BUNDLE},
    ),
)


class ImageBuildError(RuntimeError):
    """A command building a stand-in image failed."""

    def __init__(self, image: str, command: Sequence[str], problem: str, output: str) -> None:
        last_lines = "\n".join(output.splitlines()[-OUTPUT_LINES_ON_FAILURE:])
        super().__init__(f"building {image} failed: `{' '.join(command)}` {problem}; last lines:\n{last_lines}")


@dataclass(frozen=True)
class AptSource:
    """One `deb URI SUITE ...` entry of an apt sources file."""

    uri: str
    suite: str
    components: tuple[str, ...]


def registry_reachable(timeout: float = 10) -> bool:
    """Whether Docker Hub's registry answers HTTPS at all; an HTTP error (401) counts as an answer."""
    try:
        with urllib.request.urlopen(REGISTRY_URL, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError, http.client.HTTPException):
        return False


def podman_environment() -> dict[str, str]:
    """The caller's environment, with CONTAINERS_CONF pointing at the tests' settings unless set."""
    environment = dict(os.environ)
    environment.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return environment


def run_command(image: str, command: Sequence[str], environment: Mapping[str, str] | None = None) -> None:
    """Runs `command` with its output captured; raises ImageBuildError naming `image` on failure."""
    try:
        completed = subprocess.run(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=None if environment is None else dict(environment),
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.output.decode(errors="replace") if isinstance(expired.output, bytes) else expired.output or ""
        raise ImageBuildError(image, command, f"ran past {COMMAND_TIMEOUT_SECONDS} s", output) from expired
    if completed.returncode != 0:
        raise ImageBuildError(image, command, f"exited with {completed.returncode}", completed.stdout)


def image_exists(podman: str, image: str) -> bool:
    completed = subprocess.run(
        [podman, "image", "exists", image], env=podman_environment(), capture_output=True, check=False
    )
    return completed.returncode == 0


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Entries of a sources.list file: `deb [options] URI SUITE COMPONENT...`."""
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            sources.append(AptSource(words[0].rstrip("/"), words[1], tuple(words[2:])))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Entries of a .sources file: paragraphs of Types, URIs, Suites and Components fields."""
    sources = []
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        name = ""
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and name:
                fields[name] += " " + line.strip()
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields[name] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                sources.append(AptSource(uri.rstrip("/"), suite, components))
    return sources


def host_debian_sources(suite: str = DEBIAN_SUITE) -> list[AptSource]:
    """The host's apt sources for `suite` and its -updates and -security suites, component main."""
    files = []
    for path in APT_SOURCE_FILES:
        files += sorted(path.iterdir()) if path.is_dir() else [path]
    sources: list[AptSource] = []
    for path in files:
        if not path.is_file():
            continue
        if path.suffix == ".sources":
            sources += parse_deb822_sources(path.read_text())
        elif path.suffix == ".list":
            sources += parse_one_line_sources(path.read_text())
    wanted = [
        source
        for source in sources
        if "main" in source.components and (source.suite == suite or source.suite.startswith(f"{suite}-"))
    ]
    return list(dict.fromkeys(wanted))


def sources_list(sources: Sequence[AptSource]) -> str:
    """A sources.list giving the image the host's mirrors, main component only."""
    return "".join(f"deb {source.uri} {source.suite} main\n" for source in sources)


def mounts_below(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory.resolve())
    mount_points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mount_point = line.split()[1].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            mount_points.append(mount_point)
    return sorted(mount_points, key=len, reverse=True)


def remove_root_filesystem(directory: Path) -> None:
    """Removes a debootstrap target, first unmounting what a failed run may have left mounted
    there (/proc, /sys, a bind of the host's /dev), so that no host file is deleted."""
    for mount_point in mounts_below(directory):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
    left_mounted = mounts_below(directory)
    if left_mounted:
        raise RuntimeError(f"not removing {directory}: still mounted there: {', '.join(left_mounted)}")
    shutil.rmtree(directory)


def prepare_root_filesystem(root: Path, sources: Sequence[AptSource]) -> None:
    """Points apt at the host's mirrors, keeps services from starting, drops caches and host files."""
    (root / "etc/apt/sources.list").write_text(sources_list(sources))
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN_SETTINGS)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for entry in root.glob(pattern):
            if entry.is_file():
                entry.unlink()
    for host_file in ("etc/resolv.conf", "etc/hostname"):
        (root / host_file).unlink(missing_ok=True)


def build_debian_image(podman: str) -> None:
    """debootstrap --variant=minbase from the host's mirror, imported as DEBIAN_IMAGE."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise RuntimeError(f"building {DEBIAN_IMAGE} needs debootstrap: apt-get install --yes debootstrap")
    sources = host_debian_sources()
    mirrors = [source.uri for source in sources if source.suite == DEBIAN_SUITE]
    if not mirrors:
        raise RuntimeError(f"building {DEBIAN_IMAGE}: no `{DEBIAN_SUITE} main` entry in the host's apt sources")
    root = Path(tempfile.mkdtemp(prefix="mlex-tomo-debootstrap-"))
    try:
        run_command(DEBIAN_IMAGE, [debootstrap, "--variant=minbase", DEBIAN_SUITE, str(root), mirrors[0]])
        prepare_root_filesystem(root, sources)
        import_root_filesystem(podman, root)
    finally:
        remove_root_filesystem(root)


def import_root_filesystem(podman: str, root: Path) -> None:
    """`tar -C root -c . | podman import --change ... - DEBIAN_IMAGE`."""
    tar_command = ["tar", "--numeric-owner", "-C", str(root), "-c", "."]
    import_command = [podman, "import"]
    for change in DEBIAN_IMAGE_CHANGES:
        import_command += ["--change", change]
    import_command += ["-", DEBIAN_IMAGE]
    with tempfile.TemporaryFile() as tar_errors:
        tar = subprocess.Popen(tar_command, stdout=subprocess.PIPE, stderr=tar_errors)
        try:
            imported = subprocess.run(
                import_command,
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                errors="replace",
                env=podman_environment(),
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar_status = tar.wait()
        if imported.returncode != 0:
            output = imported.stdout + imported.stderr
            raise ImageBuildError(DEBIAN_IMAGE, import_command, f"exited with {imported.returncode}", output)
        if tar_status != 0:
            tar_errors.seek(0)
            output = tar_errors.read().decode(errors="replace")
            raise ImageBuildError(DEBIAN_IMAGE, tar_command, f"exited with {tar_status}", output)


def build_containerfile_image(podman: str, image: ContainerfileImage, no_cache: bool) -> None:
    """podman build in a temporary copy of the image's directory with its host files added."""
    with tempfile.TemporaryDirectory(prefix="mlex-tomo-context-") as temporary:
        context = Path(temporary) / image.directory
        shutil.copytree(IMAGES_DIRECTORY / image.directory, context)
        for name, source in image.context_files.items():
            if not source.is_file():
                raise RuntimeError(f"building {image.image} needs {source}, which does not exist")
            destination = context / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError:
                shutil.copyfile(source, destination)
        command = [podman, "build", "--pull=never", "--tag", image.image, "--file", str(context / "Containerfile")]
        if no_cache:
            command.append("--no-cache")
        for name, value in image.build_arguments.items():
            command += ["--build-arg", f"{name}={value}"]
        for name, source in image.secrets.items():
            command += ["--secret", f"id={name},src={source}"]
        run_command(image.image, [*command, str(context)], podman_environment())


def build_offline_base_images(
    podman: str = "podman", report: Callable[[str], object] = print, rebuild: bool = False
) -> dict[str, str]:
    """Builds each stand-in that is missing (all of them with `rebuild`) and returns OFFLINE_IMAGES.

    Reports one line per image: how long its build took, or that it was already present.
    """
    stages: list[tuple[str, Callable[[], None]]] = [(DEBIAN_IMAGE, partial(build_debian_image, podman))]
    stages += [
        (image.image, partial(build_containerfile_image, podman, image, rebuild)) for image in CONTAINERFILE_IMAGES
    ]
    for image, build in stages:
        if not rebuild and image_exists(podman, image):
            report(f"present: {image}")
            continue
        started = time.monotonic()
        build()
        report(f"built {image}: {time.monotonic() - started:.1f} s")
    return dict(OFFLINE_IMAGES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build every image again, without the layer cache")
    parser.add_argument("--podman", default="podman", help="podman executable (default: podman)")
    arguments = parser.parse_args(argv)
    try:
        images = build_offline_base_images(arguments.podman, rebuild=arguments.rebuild)
    except (RuntimeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    for variable, image in images.items():
        print(f"{variable}={image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
