"""The embedded PostgreSQL: `python -m stack.postgres --data DIR ...`, as `mlex-tomo up` runs it.

On first start it creates the cluster (`initdb`, password login only, the password read
from its file and handed to initdb on stdin) and the `tiled` and `prefect` databases
(in single-user mode, before anything listens), then replaces itself with `postgres`,
so the supervisor's signals reach the server. PostgreSQL refuses to run as root: under
root the cluster belongs to, and the server runs as, Debian's `postgres` user.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

DATABASES = ("tiled", "prefect")
SERVER_USER_UNDER_ROOT = "postgres"
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")


class PostgresUnavailable(RuntimeError):
    pass


def binaries_folder(configured: Path | None) -> Path:
    """Where initdb and postgres are: as configured, on PATH, or Debian's newest version."""
    if configured is not None:
        return configured
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(DEBIAN_BIN_DIRS.glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise PostgresUnavailable("initdb not found: install Debian's postgresql package or set postgres.bin_dir")


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None for this one, Debian's `postgres` under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER_UNDER_ROOT)
    except KeyError:
        raise PostgresUnavailable(f"PostgreSQL will not run as root and there is no {SERVER_USER_UNDER_ROOT!r} user") from None


def check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """Every folder above the data must let the server's account through, or it fails with a bare 'permission denied'."""
    for parent in reversed(folder.absolute().parents):
        if not parent.exists():
            return
        mode = parent.stat()
        if mode.st_uid == account.pw_uid:
            allowed = mode.st_mode & stat.S_IXUSR
        elif mode.st_gid == account.pw_gid:
            allowed = mode.st_mode & stat.S_IXGRP
        else:
            allowed = mode.st_mode & stat.S_IXOTH
        if not allowed:
            raise PostgresUnavailable(
                f"user {account.pw_name!r}, which runs PostgreSQL under root, cannot enter {parent}: "
                f"allow it (chmod o+x {parent}) or put data_dir elsewhere"
            )


def create_cluster(binaries: Path, cluster: Path, user: str, password: str, account: pwd.struct_passwd | None) -> None:
    """initdb and the databases; a cluster left half-made is removed, so the next start tries afresh."""
    cluster.mkdir(parents=True, exist_ok=True)
    cluster.chmod(0o700)
    password_file = cluster.parent / ".initdb-password"
    password_file.touch(mode=0o600)
    password_file.write_text(password)
    as_account = {}
    if account is not None:
        for path in (cluster, password_file):
            os.chown(path, account.pw_uid, account.pw_gid)
        as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    statements = "".join(f"CREATE DATABASE {database};\n\n" for database in DATABASES)  # -j ends a statement at ";" and a blank line
    try:
        subprocess.run(
            [
                str(binaries / "initdb"), "--pgdata", str(cluster), "--username", user, "--pwfile", str(password_file),
                "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-instructions",
            ],
            check=True, stdout=subprocess.DEVNULL, cwd="/", **as_account,
        )
        subprocess.run(
            [str(binaries / "postgres"), "--single", "-D", str(cluster), "-j", "postgres"],
            input=statements, text=True, check=True, stdout=subprocess.DEVNULL, cwd="/", **as_account,
        )
    except subprocess.CalledProcessError:
        shutil.rmtree(cluster, ignore_errors=True)
        raise
    finally:
        password_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the cluster (created on first start)")
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument("--user", default="mlex_tomo")
    parser.add_argument("--bin-dir", type=Path)
    arguments = parser.parse_args(argv)
    try:
        binaries, account = binaries_folder(arguments.bin_dir), server_account()
        if account is not None:
            check_reachable(arguments.data, account)
    except PostgresUnavailable as error:
        sys.exit(f"postgres: {error}")
    cluster = arguments.data / "cluster"
    if not (cluster / "PG_VERSION").is_file():
        print(f"postgres: creating the cluster in {cluster} with databases {', '.join(DATABASES)}", flush=True)
        try:
            create_cluster(binaries, cluster, arguments.user, arguments.password_file.read_text().strip(), account)
        except subprocess.CalledProcessError as error:
            sys.exit(f"postgres: {Path(error.cmd[0]).name} failed with exit code {error.returncode}; see its output above")
    sockets = arguments.data / "sockets"
    sockets.mkdir(exist_ok=True)
    if account is not None:
        os.chown(sockets, account.pw_uid, account.pw_gid)
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    os.chdir("/")
    server = str(binaries / "postgres")
    os.execv(server, [server, "-D", str(cluster), "-h", arguments.host, "-p", str(arguments.port), "-k", str(sockets)])


if __name__ == "__main__":
    main()
