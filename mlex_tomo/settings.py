"""One typed settings model for the whole stack.

Sources, lowest precedence first: defaults < YAML file < the tools' own variables
(`PREFECT_API_URL`, `TILED_API_KEY`, as their docs say) < `MLEX_TOMO_*` environment
variables < command-line overrides (`--tiled.port 8001`). Unknown keys are errors in
every source, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from mlex_tomo.validation import validation_problems
from tiled_config import CONFIG_PATH as TILED_CONFIG_PATH

ENV_PREFIX = "MLEX_TOMO_"
GENERATED_BROKER_USER = "mlex-tomo"  # the login `up` makes for its embedded broker (docs/operator-guide.md)
ENV_NESTED_DELIMITER = "__"
CONFIG_FILE_VARIABLE = "MLEX_TOMO_CONFIG"

Port = Annotated[int, Field(ge=1, le=65535)]


def _absolute(path: Path) -> Path:
    """Anchor a relative path to the directory the command was started in, once.

    Children and flow runs work in other directories (Prefect runs each flow in a
    temporary folder), so a path left relative would name a different place in each.
    Symlinks are kept: resolving a virtual environment's `python` would leave the venv.
    """
    return path.expanduser().absolute()


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class SettingsError(ValueError):
    """Settings that cannot be loaded; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _read_secret(value: SecretStr | None, file: Path | None, field: str) -> SecretStr | None:
    """A secret given inline wins; otherwise it is read from its file."""
    if value is not None or file is None:
        return value
    try:
        return SecretStr(file.read_text().strip())
    except OSError as error:
        raise ValueError(f"{field}_file: cannot read {file}: {error.strerror}") from None


class TiledSettings(Section):
    """The Tiled server that serves every array: reconstructions, masks, results."""

    host: str = Field(default="127.0.0.1", description="Address the embedded Tiled server binds to.")
    port: Port = Field(default=8000, description="Port of the embedded Tiled server.")
    url: str | None = Field(
        default=None, description="An existing Tiled server; when set, `up` starts none."
    )
    api_key: SecretStr | None = Field(default=None, description="Key that allows writes.")
    api_key_file: AbsolutePath | None = Field(default=None, description="File holding the API key.")
    catalog_uri: str | None = Field(
        default=None,
        description="SQL catalog; default: SQLite under data_dir. Use postgresql://... to scale out.",
    )
    config_path: AbsolutePath = Field(
        default=TILED_CONFIG_PATH, description="Tiled server config file (default: the shipped one)."
    )

    @model_validator(mode="after")
    def _load_secret(self) -> TiledSettings:
        self.api_key = _read_secret(self.api_key, self.api_key_file, "api_key")
        return self

    @property
    def base_url(self) -> str:
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def embedded(self) -> bool:
        return self.url is None


QUEUE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class PrefectSettings(Section):
    """The Prefect server and the work pool that runs segmentation jobs."""

    host: str = Field(default="127.0.0.1", description="Address the embedded Prefect server binds to.")
    port: Port = Field(default=4200, description="Port of the embedded Prefect server and UI.")
    api_url: str | None = Field(
        default=None, description="An existing Prefect API (also read from PREFECT_API_URL)."
    )
    database_url: str | None = Field(
        default=None, description="Prefect's database; default: SQLite under data_dir."
    )
    work_pool: str = Field(
        default="segmentation", min_length=1, description="Work pool the deployments run on."
    )
    worker_query_seconds: float = Field(
        default=1.0, gt=0, description="How often the worker asks for new runs."
    )
    forest_queue: str = Field(
        default="cpu", pattern=QUEUE_NAME, description="Work queue of the runs that train a random forest, which any node can run."
    )
    network_queue: str = Field(
        default="gpu",
        pattern=QUEUE_NAME,
        description="Work queue of every other run (networks, and segmenting with a trained model): the GPU nodes'.",
    )
    worker_queues: list[Annotated[str, Field(pattern=QUEUE_NAME)]] = Field(
        default_factory=list,
        description="Queues this node's worker takes runs from, e.g. [gpu, cpu] on a GPU node; empty: every queue of the pool.",
    )
    worker_limit: int | None = Field(
        default=None, ge=1, description="Most flow runs this node's worker runs at once: 1 on a GPU node, one job per GPU."
    )
    worker_name: str | None = Field(
        default=None, pattern=QUEUE_NAME, description="Name of this node's worker in Prefect; default: <host>-<work_pool>."
    )
    public_ui_url: str | None = Field(
        default=None,
        description="Prefect's UI as browsers reach it, for the web app's links to runs; "
        "default: beside the API. Set it where services reach Prefect by an internal name (compose).",
    )

    @property
    def resolved_api_url(self) -> str:
        return (self.api_url or f"http://{self.host}:{self.port}/api").rstrip("/")

    @property
    def ui_url(self) -> str:
        """Prefect's web UI as a browser reaches it: the public address, else beside its API."""
        return (self.public_ui_url or self.resolved_api_url.removesuffix("/api")).rstrip("/")

    @property
    def embedded(self) -> bool:
        return self.api_url is None


class PostgresSettings(Section):
    """A PostgreSQL that `up` runs for Tiled's catalog and Prefect's database, as compose does."""

    embedded: bool = Field(
        default=False,
        description="Run Tiled's catalog and Prefect's database on a PostgreSQL that `up` starts (Debian's postgresql "
        "package), its data under data_dir/postgres; off: SQLite files. tiled.catalog_uri and prefect.database_url win.",
    )
    host: str = Field(default="127.0.0.1", description="Address the embedded PostgreSQL listens on.")
    port: Port = Field(default=5433, description="Its port (5432 is left to a system PostgreSQL).")
    user: str = Field(default="mlex_tomo", pattern=r"^[a-z_][a-z0-9_]*$", description="The role Tiled and Prefect log in as.")
    bin_dir: AbsolutePath | None = Field(
        default=None, description="Folder of initdb and postgres; default: on PATH, else the newest /usr/lib/postgresql/*/bin."
    )


class BrokerSettings(Section):
    """The ActiveMQ broker on which reconstructions are announced."""

    url: str | None = Field(
        default=None,
        description="An existing broker as stomp://host:port; when set, `up` starts none.",
    )
    host: str = Field(default="127.0.0.1", description="Address the embedded broker binds to.")
    stomp_port: Port = Field(default=61613, description="STOMP port (what the ingester uses).")
    openwire_port: Port = Field(default=61616, description="OpenWire port (JMS clients).")
    user: str | None = Field(default=None, description="Broker login, if the broker needs one.")
    password: SecretStr | None = Field(default=None, description="Broker passcode.")
    password_file: AbsolutePath | None = Field(default=None, description="File holding the broker passcode.")
    activemq_home: AbsolutePath = Field(
        default=Path("/usr/share/activemq"), description="ActiveMQ Classic install (Debian's package)."
    )
    java: str = Field(default="java", description="Java executable that runs the embedded broker.")
    heap: str = Field(default="256M", pattern=r"^\d+[KMG]$", description="Broker JVM heap (-Xmx).")

    @model_validator(mode="after")
    def _load_secret(self) -> BrokerSettings:
        self.password = _read_secret(self.password, self.password_file, "password")
        return self

    @model_validator(mode="after")
    def _check_url(self) -> BrokerSettings:
        if self.url is not None:
            self.stomp_address  # noqa: B018 - raises on a malformed URL
        return self

    @property
    def stomp_address(self) -> tuple[str, int]:
        if self.url is None:
            return self.host, self.stomp_port
        scheme, _, rest = self.url.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if scheme not in {"stomp", "tcp"} or not host or not port.isdigit():
            raise ValueError(f"url: expected stomp://host:port, got {self.url!r}")
        return host, int(port)

    @property
    def embedded(self) -> bool:
        return self.url is None


class IngesterSettings(Section):
    """The listener that registers announced reconstructions in Tiled."""

    destination: str = Field(
        default="/topic/org.dawnsci.file.topic",
        pattern=r"^/(topic|queue)/\S+$",
        description="Where reconstructions are announced (Savu/GDA publish to this topic).",
    )
    dead_letter_destination: str = Field(
        default="/queue/mlex.ingest.dlq",
        pattern=r"^/(topic|queue)/\S+$",
        description="Rejected messages go here with the reason in the `mlex-reason` header.",
    )
    client_id: str = Field(
        default="mlex-tomo-ingester",
        min_length=1,
        description="STOMP client id; with a topic, names the durable subscription that keeps "
        "messages published while the ingester is down. One per ingester.",
    )
    data_roots: list[AbsolutePath] = Field(
        default_factory=list,
        description="Only files under these folders are ingested; default: data_dir/tiled_storage/recons. "
        "Tiled's readable_storage must cover them.",
    )
    accepted_statuses: list[str] = Field(
        default_factory=lambda: ["COMPLETE", "COMPLETED", "FINISHED", "SUCCESS"],
        description="Message `status` values meaning the file is final (case-insensitive); "
        "a message without `status` is final too. Others are acknowledged and skipped.",
    )
    hdf5_dataset: str | None = Field(
        default=None,
        description="Dataset to register from plain HDF5 files; default: the only 3-D dataset.",
    )
    file_wait_seconds: float = Field(
        default=30.0, ge=0, description="How long to wait for an announced file that is not there yet."
    )
    file_read_seconds: float = Field(
        default=60.0, gt=0,
        description="Longest the headers of one file may take to read (a stalled network mount, a file built to "
        "stall a reader); a slower file is dead-lettered with that reason and the messages behind it go on.",
    )
    heartbeat_milliseconds: int = Field(
        default=10_000, ge=0, description="STOMP heart-beat interval, both directions."
    )
    reconnect_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between reconnection attempts (backoff cap)."
    )
    register_existing: bool = Field(
        default=True,
        description="Register the scans already in the data roots (the shipped samples, scans written "
        "while the stack was down): files in each root and in the folders directly below it. `up` does it at "
        "start and reports them; a separately started ingester (the compose install's) does it before listening.",
    )


class UISettings(Section):
    """The segmentation web app (Dash), the scientist's only entry point."""

    host: str = Field(default="127.0.0.1", description="Address the web app binds to; 0.0.0.0 to serve the network.")
    port: Port = Field(default=8075, description="Port of the web app.")
    username: str | None = Field(default=None, description="Basic-auth user; login is off unless set with a password.")
    password: SecretStr | None = Field(default=None, description="Basic-auth password.")
    password_file: AbsolutePath | None = Field(default=None, description="File holding the basic-auth password.")
    public_url: str | None = Field(
        default=None,
        description="The web app as users' browsers reach it, for the links and hints other parts print; "
        "default: http://host:port. Set it where the app is reached by another name (compose, a proxy).",
    )
    threads: int = Field(
        default=8, ge=1, le=64,
        description="Requests the web app serves at once (gunicorn threads, in one process: the slice cache lives in it).",
    )
    image_cache_mib: int = Field(
        default=64, ge=0, le=65536,
        description="Memory for slices read from Tiled, at the resolution shown (a 1024² uint16 slice: 2 MiB). "
        "Slices read ahead land here; slices already seen are also in the browser's cache.",
    )
    preview_cache_mib: int = Field(
        default=512, ge=0, le=65536,
        description="Memory for the live preview's features of recently viewed slices (128 MiB per slice at the "
        "preview's 1024² resolution); a slice whose features were dropped costs about a second to preview again.",
    )
    scan_refresh_seconds: float = Field(default=5.0, gt=0, description="How often the scan list looks for new scans.")
    status_refresh_seconds: float = Field(default=10.0, gt=0, description="How often the status panel probes services.")
    jobs_refresh_seconds: float = Field(default=2.0, gt=0, description="How often the job list follows runs in Prefect.")

    @model_validator(mode="after")
    def _load_secret(self) -> UISettings:
        self.password = _read_secret(self.password, self.password_file, "password")
        if (self.username is None) != (self.password is None):
            raise ValueError("set both ui.username and ui.password (or ui.password_file) to turn login on")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def browser_url(self) -> str:
        """Where a person opens the web app: the public address, else where it is served."""
        return (self.public_url or self.url).rstrip("/")

    @property
    def login_required(self) -> bool:
        return self.username is not None


SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SlurmSettings(Section):
    """The batch jobs the `slurm` launcher submits; the operator's alone, never a run's.

    Each field becomes one `#SBATCH` line of the generated script (docs/operator-guide.md
    shows one); an empty field leaves the cluster's default.
    """

    partition: str | None = Field(default=None, pattern=SLURM_NAME, description="`--partition`, e.g. gpu.")
    account: str | None = Field(default=None, pattern=SLURM_NAME, description="`--account` charged for the jobs.")
    qos: str | None = Field(default=None, pattern=SLURM_NAME, description="`--qos`, e.g. a beamtime's own.")
    time_limit: str = Field(
        default="02:00:00",
        pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$",
        description="`--time`: minutes, or [days-]hours:minutes:seconds. Slurm ends a job past it (TIMEOUT).",
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="`--nodes`.")
    cpus_per_task: int | None = Field(
        default=None, ge=1, le=4096, description="`--cpus-per-task`; a run's resources.cpus overrides it."
    )
    memory: str | None = Field(
        default=None, pattern=r"^\d+[KMGT]?$", description="`--mem`, e.g. 64G; a run's resources.memory_gib overrides it."
    )
    gpus: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_:.-]+$",
        description="`--gpus` of a job that gets GPUs, e.g. 1 or h200:1. With jobs.gpus auto, jobs get GPUs "
        "when this or `gres` is set.",
    )
    gres: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_:.,-]+$", description="`--gres` instead of `--gpus`, e.g. gpu:1, for sites that use it."
    )
    extra_directives: list[Annotated[str, Field(pattern=r"^--[A-Za-z][A-Za-z0-9-]*(=[^\s#]+)?$")]] = Field(
        default_factory=list, description="More `#SBATCH` options, e.g. --constraint=h200 or --exclusive."
    )
    runtime: Literal["python", "podman", "apptainer"] = Field(
        default="python",
        description="How the batch job runs `python -m segmentation`: jobs.python on the node (a shared environment), "
        "or jobs.image through podman, or an Apptainer image (apptainer_image).",
    )
    apptainer_image: AbsolutePath | None = Field(
        default=None, description="The job image as a .sif file on shared storage, for runtime: apptainer."
    )
    poll_seconds: float = Field(
        default=2.0, gt=0, le=60, description="How often the job's state and output are read (upstream: sacct every 10 s)."
    )

    @property
    def asks_for_gpus(self) -> bool:
        return self.gpus is not None or self.gres is not None

    @model_validator(mode="after")
    def _apptainer_needs_an_image(self) -> SlurmSettings:
        if self.runtime == "apptainer" and self.apptainer_image is None:
            raise ValueError("runtime apptainer needs jobs.slurm.apptainer_image (a .sif file on shared storage)")
        return self


class JobSettings(Section):
    """How the worker launches segmentation jobs (`python -m segmentation params.yaml`)."""

    launcher: Literal["process", "podman", "docker", "slurm"] = Field(
        default="process", description="Default launcher; a run may name another."
    )
    python: AbsolutePath | None = Field(
        default=None,
        description="Python of the environment the process launcher runs jobs in; default: the worker's own.",
    )
    image: str = Field(
        default="localhost/mlex-tomo-segmentation:latest",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        description="Image the podman and docker launchers run (built from segmentation/Containerfile).",
    )
    container_rootfs: AbsolutePath | None = Field(
        default=None,
        description="podman only: run jobs in an overlay of this root file system (`--rootfs PATH:O`) "
        "instead of the image, with `python` as the job's interpreter; for hosts that cannot pull images.",
    )
    container_network: str = Field(
        default="host",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Container network; `host` lets jobs reach Tiled at the address the flow uses.",
    )
    gpus: Literal["auto", "all", "none"] = Field(
        default="auto",
        description="Give containers the node's GPUs: auto = when /dev/nvidia0 exists.",
    )
    gpu_request: Literal["auto", "gpus", "cdi"] = Field(
        default="auto",
        description="How containers ask for the GPUs: `cdi` (`--device nvidia.com/gpu=all`: podman, also through its "
        "Docker API, or Docker with CDI on), `gpus` (`--gpus all`: Docker's NVIDIA runtime); auto = cdi for podman, gpus for docker.",
    )
    cpus: float | None = Field(default=None, gt=0, description="Default CPU limit of a job container.")
    memory_gib: float | None = Field(default=None, gt=0, description="Default memory limit of a job container.")
    models_dir: AbsolutePath | None = Field(
        default=None, description="Where trained models are kept; default: data_dir/models. Share it between GPU nodes."
    )
    work_dir: AbsolutePath | None = Field(
        default=None, description="Parameters files of the jobs; default: data_dir/jobs."
    )
    stop_grace_seconds: float = Field(
        default=3.0, gt=0, le=60, description="After SIGTERM, how long a cancelled job may take before it is killed."
    )
    slurm: SlurmSettings = SlurmSettings()


class StackSettings(BaseSettings):
    """Everything a part of mlex-tomo can be told; see docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid"
    )

    data_dir: AbsolutePath = Field(
        default=Path("data"),
        description="Catalogs, broker store, logs, secrets and tiled_storage/ live here.",
    )
    startup_timeout: float = Field(
        default=120.0, gt=0, description="Seconds each service may take to become healthy."
    )
    tiled: TiledSettings = TiledSettings()
    prefect: PrefectSettings = PrefectSettings()
    broker: BrokerSettings = BrokerSettings()
    postgres: PostgresSettings = PostgresSettings()
    ingester: IngesterSettings = IngesterSettings()
    jobs: JobSettings = JobSettings()
    ui: UISettings = UISettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # load_settings() layers the sources itself, so the constructor takes only what
        # it is given: StackSettings() alone is the pure defaults.
        return (init_settings,)

    @model_validator(mode="after")
    def _use_generated_tiled_key(self) -> StackSettings:
        """Pick up the key `mlex-tomo up` generated when none was configured."""
        key_file = self.tiled_api_key_path
        if self.tiled.api_key is None and self.tiled.api_key_file is None and key_file.is_file():
            self.tiled.api_key = SecretStr(key_file.read_text().strip())
        return self

    @model_validator(mode="after")
    def _use_generated_broker_login(self) -> StackSettings:
        """Pick up the login `mlex-tomo up` generated for its embedded broker when none was configured."""
        broker, password_file = self.broker, self.broker_password_path
        if broker.embedded and broker.user is None and broker.password is None and password_file.is_file():
            broker.user = GENERATED_BROKER_USER
            broker.password = SecretStr(password_file.read_text().strip())
        return self

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()

    @property
    def logs_path(self) -> Path:
        return self.data_path / "logs"

    @property
    def recons_path(self) -> Path:
        return self.data_path / "tiled_storage" / "recons"

    @property
    def writable_path(self) -> Path:
        return self.data_path / "tiled_storage" / "writable"

    @property
    def ingest_roots(self) -> list[Path]:
        roots = self.ingester.data_roots or [self.recons_path]
        return [root.resolve() for root in roots]

    @property
    def run_path(self) -> Path:
        """Files of the running stack: lock, resolved settings for children, status."""
        return self.data_path / "run"

    @property
    def ingester_status_path(self) -> Path:
        return self.run_path / "ingester.json"

    @property
    def ingester_parked_path(self) -> Path:
        """Messages the broker would take neither back nor as dead letters, one JSON file each."""
        return self.data_path / "ingester" / "parked"

    @property
    def tiled_api_key_path(self) -> Path:
        return self.data_path / "secrets" / "tiled_api_key"

    @property
    def broker_password_path(self) -> Path:
        return self.data_path / "secrets" / "broker_password"

    @property
    def postgres_password_path(self) -> Path:
        """Generated by `up` for its embedded PostgreSQL; Tiled and Prefect get it in their database URLs, by environment."""
        return self.data_path / "secrets" / "postgres_password"

    def postgres_url(self, database: str) -> str:
        """The embedded PostgreSQL's `database` as SQLAlchemy's asyncpg URL, password included: for environments only."""
        postgres = self.postgres
        password = self.postgres_password_path.read_text().strip()
        return f"postgresql+asyncpg://{postgres.user}:{password}@{postgres.host}:{postgres.port}/{database}"

    @property
    def tiled_catalog_uri(self) -> str:
        if self.tiled.catalog_uri:
            return self.tiled.catalog_uri
        if self.postgres.embedded:
            return self.postgres_url("tiled")
        return f"sqlite:///{self.data_path / 'tiled' / 'catalog.db'}"

    @property
    def prefect_database_url(self) -> str:
        if self.prefect.database_url:
            return self.prefect.database_url
        if self.postgres.embedded:
            return self.postgres_url("prefect")
        return f"sqlite+aiosqlite:///{self.data_path / 'prefect' / 'prefect.db'}"

    @property
    def models_path(self) -> Path:
        return (self.jobs.models_dir or self.data_path / "models").resolve()

    @property
    def jobs_path(self) -> Path:
        return (self.jobs.work_dir or self.data_path / "jobs").resolve()


def load_settings(
    config_file: AbsolutePath | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> StackSettings:
    """Resolve the settings from every source; raise SettingsError naming the bad key."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(CONFIG_FILE_VARIABLE):
        config_file = Path(environ[CONFIG_FILE_VARIABLE])
    layers = [
        _read_config_file(config_file) if config_file else {},
        _tool_variables(environ),
        _prefixed_variables(environ),
        dict(overrides or {}),
    ]
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer)
    try:
        return StackSettings(**merged)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    return "invalid settings:\n  " + "\n  ".join(validation_problems(error, whole="(settings)", show_input=True))


def parse_dotted_overrides(arguments: list[str]) -> dict[str, Any]:
    """Turn `--tiled.port 8001` and `--tiled.port=8001` into nested dicts."""
    overrides: dict[str, Any] = {}
    remaining = list(arguments)
    while remaining:
        argument = remaining.pop(0)
        if not argument.startswith("--") or len(argument) == 2:
            raise SettingsError(f"unexpected argument {argument!r}; overrides look like --tiled.port 8001")
        key, has_value, value = argument[2:].partition("=")
        if not has_value:
            if not remaining or remaining[0].startswith("--"):
                raise SettingsError(f"--{key} needs a value")
            value = remaining.pop(0)
        path = key.replace("-", "_").split(".")
        if not all(path):
            raise SettingsError(f"malformed setting name --{key}")
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"--{key} conflicts with another override")
        node[path[-1]] = _parse_scalar(value)
    return overrides


def settings_as_yaml(settings: StackSettings) -> str:
    """The resolved settings without secrets, in the config file format."""
    values = settings.model_dump(mode="json", exclude=_secret_fields())
    return yaml.safe_dump(values, sort_keys=False)


def _secret_fields() -> dict[str, set[str]]:
    return {"tiled": {"api_key"}, "broker": {"password"}, "ui": {"password"}}


def secrets_as_environment(settings: StackSettings) -> dict[str, str]:
    """The secrets `settings_as_yaml` leaves out, as variables for a child process."""
    values = {
        "TILED__API_KEY": settings.tiled.api_key,
        "BROKER__PASSWORD": settings.broker.password,
        "UI__PASSWORD": settings.ui.password,
    }
    return {ENV_PREFIX + name: secret.get_secret_value() for name, secret in values.items() if secret}


def _parse_scalar(value: str) -> Any:
    """Lists and mappings come as JSON; everything else stays a string for pydantic."""
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise SettingsError(f"cannot parse {value!r} as JSON: {error}") from None
    return value


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.expanduser().read_text()
    except OSError as error:
        raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SettingsError(f"config file {path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    return values


def _tool_variables(environ: Mapping[str, str]) -> dict[str, Any]:
    """Prefect's and Tiled's own variables keep the meaning their docs give them."""
    values: dict[str, Any] = {}
    if environ.get("PREFECT_API_URL"):
        values.setdefault("prefect", {})["api_url"] = environ["PREFECT_API_URL"]
    if environ.get("TILED_API_KEY"):
        values.setdefault("tiled", {})["api_key"] = environ["TILED_API_KEY"]
    return values


def _prefixed_variables(environ: Mapping[str, str]) -> dict[str, Any]:
    unknown = [
        name
        for name in environ
        if name.startswith(ENV_PREFIX) and name != CONFIG_FILE_VARIABLE and not _is_known(name)
    ]
    if unknown:
        raise SettingsError(
            "unknown environment variable(s): "
            + ", ".join(sorted(unknown))
            + f" (names are {ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>, e.g. {ENV_PREFIX}TILED__PORT)"
        )
    source = EnvSettingsSource(StackSettings, case_sensitive=False)
    source.env_vars = {name.lower(): value for name, value in environ.items()}
    return source()


def _is_known(variable: str) -> bool:
    path = variable[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
    model: type[BaseModel] | None = StackSettings
    for part in path:
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
