"""Settings: precedence of sources, generate-config round trip, clear errors, secrets, paths."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from stack.cli import main
from mlex_tomo.config_reference import render
from mlex_tomo.settings import (
    SettingsError,
    StackSettings,
    load_settings,
    parse_dotted_overrides,
    settings_as_yaml,
)


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults_match_the_documented_ports():
    settings = load_settings(environ={})
    assert settings == StackSettings()
    assert (settings.tiled.port, settings.prefect.port, settings.broker.stomp_port) == (8000, 4200, 61613)
    assert settings.prefect.work_pool == "segmentation"


def test_each_source_overrides_the_one_below(tmp_path):
    config = write_yaml(
        tmp_path / "settings.yaml",
        {"tiled": {"port": 8001, "host": "from-file"}, "prefect": {"port": 4201}, "broker": {"heap": "512M"}},
    )
    environ = {"MLEX_TOMO_TILED__PORT": "8002", "MLEX_TOMO_PREFECT__PORT": "4202"}
    overrides = parse_dotted_overrides(["--tiled.port", "8003"])

    settings = load_settings(config, overrides, environ)

    assert settings.broker.heap == "512M"  # file only
    assert settings.tiled.host == "from-file"  # file, untouched by env or CLI
    assert settings.prefect.port == 4202  # env beats file
    assert settings.tiled.port == 8003  # CLI beats env and file


def test_config_file_can_come_from_the_environment(tmp_path):
    config = write_yaml(tmp_path / "settings.yaml", {"startup_timeout": 5})
    settings = load_settings(environ={"MLEX_TOMO_CONFIG": str(config)})
    assert settings.startup_timeout == 5


def test_tool_variables_keep_their_meaning_but_ours_win():
    environ = {"PREFECT_API_URL": "http://prefect.example:4200/api", "TILED_API_KEY": "from-tiled-var"}
    settings = load_settings(environ=environ)
    assert settings.prefect.resolved_api_url == "http://prefect.example:4200/api"
    assert not settings.prefect.embedded
    assert settings.tiled.api_key.get_secret_value() == "from-tiled-var"

    environ["MLEX_TOMO_PREFECT__API_URL"] = "http://ours:4200/api"
    assert load_settings(environ=environ).prefect.api_url == "http://ours:4200/api"


def test_links_to_runs_use_the_public_prefect_ui_where_one_is_set():
    internal = {"PREFECT_API_URL": "http://prefect-server:4200/api"}
    assert load_settings(environ=internal).prefect.ui_url == "http://prefect-server:4200"
    public = {**internal, "MLEX_TOMO_PREFECT__PUBLIC_UI_URL": "http://beamline-ws:4200/"}
    assert load_settings(environ=public).prefect.ui_url == "http://beamline-ws:4200"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--tiled.port", "8001"], {"tiled": {"port": "8001"}}),
        (["--tiled.port=8001", "--tiled.host", "h"], {"tiled": {"port": "8001", "host": "h"}}),
        (["--prefect.work-pool", "gpu"], {"prefect": {"work_pool": "gpu"}}),
        (["--data_dir", "/x"], {"data_dir": "/x"}),
    ],
)
def test_dotted_overrides_parse(arguments, expected):
    assert parse_dotted_overrides(arguments) == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--tiled.port"], "needs a value"), (["tiled.port", "1"], "unexpected argument"), (["--tiled..port", "1"], "malformed")],
)
def test_malformed_overrides_are_explained(arguments, message):
    with pytest.raises(SettingsError, match=message):
        parse_dotted_overrides(arguments)


def test_unknown_keys_fail_in_every_source_and_name_the_key(tmp_path):
    with pytest.raises(SettingsError, match=r"tiled\.prot: Extra inputs are not permitted"):
        load_settings(overrides={"tiled": {"prot": "1"}}, environ={})
    config = write_yaml(tmp_path / "settings.yaml", {"brokr": {}})
    with pytest.raises(SettingsError, match=r"brokr: Extra inputs"):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match="MLEX_TOMO_TILED__PROT"):
        load_settings(environ={"MLEX_TOMO_TILED__PROT": "1"})


def test_wrong_types_name_the_key_and_the_value(tmp_path):
    with pytest.raises(SettingsError, match=r"tiled\.port: .*integer.*'eighty'"):
        load_settings(environ={"MLEX_TOMO_TILED__PORT": "eighty"})
    with pytest.raises(SettingsError, match=r"prefect\.port: .*less than or equal to 65535"):
        load_settings(overrides={"prefect": {"port": "70000"}}, environ={})
    with pytest.raises(SettingsError, match=r"broker: .*url: expected stomp://host:port"):
        load_settings(overrides={"broker": {"url": "http://nope"}}, environ={})
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="must hold a mapping"):
        load_settings(not_a_mapping, environ={})


def test_secrets_come_from_a_file_and_are_never_shown(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    settings = load_settings(environ={"MLEX_TOMO_TILED__API_KEY_FILE": str(key_file)})
    assert settings.tiled.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(settings)

    with pytest.raises(SettingsError, match=r"api_key_file: cannot read"):
        load_settings(environ={"MLEX_TOMO_TILED__API_KEY_FILE": str(tmp_path / "missing")})


def test_generated_key_in_the_data_dir_is_picked_up(tmp_path):
    key_path = tmp_path / "secrets" / "tiled_api_key"
    key_path.parent.mkdir()
    key_path.write_text("generated")
    settings = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    assert settings.tiled.api_key.get_secret_value() == "generated"


def test_generate_config_round_trips_without_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLEX_TOMO_TILED__API_KEY", "never-written")
    monkeypatch.setenv("MLEX_TOMO_BROKER__PASSWORD", "never-written-either")
    path = tmp_path / "mlex-tomo.yaml"

    assert main(["generate-config", "--path", str(path), "--tiled.port", "8123", "--prefect.work_pool", "gpu"]) == 0

    text = path.read_text()
    assert "never-written" not in text
    monkeypatch.delenv("MLEX_TOMO_TILED__API_KEY")
    monkeypatch.delenv("MLEX_TOMO_BROKER__PASSWORD")
    reloaded = load_settings(path, environ={})
    assert reloaded.tiled.port == 8123 and reloaded.prefect.work_pool == "gpu"
    assert reloaded == load_settings(overrides={"tiled": {"port": 8123}, "prefect": {"work_pool": "gpu"}}, environ={})


def test_generate_config_asks_before_overwriting(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mlex-tomo.yaml"
    path.write_text("keep me")

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["generate-config", "--path", str(path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert path.read_text() == "keep me"

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["generate-config", "--path", str(path)]) == 1
    assert path.read_text() == "keep me"

    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["generate-config", "--path", str(path)]) == 0
    assert "tiled:" in path.read_text()

    path.write_text("keep me")
    assert main(["generate-config", "--path", str(path), "--force"]) == 0
    assert "tiled:" in path.read_text()


def test_cli_reports_bad_settings_with_exit_code_2(capsys):
    assert main(["status", "--tiled.port", "not-a-port"]) == 2
    assert "tiled.port" in capsys.readouterr().err


def test_configuration_reference_is_current():
    """docs/configuration.md is generated; regenerate it when settings change."""
    committed = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert committed == render(), "run: python -m mlex_tomo.config_reference > docs/configuration.md"


def path_settings() -> list[str]:
    """Dotted names of every setting that holds a path, read from the model so new ones are covered."""
    names = []
    for name, field in StackSettings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += [f"{name}.{key}" for key, inner in section.model_fields.items() if "Path" in str(inner.annotation)]
        elif "Path" in str(field.annotation):
            names.append(name)
    return names


def dotted_value(values: dict, name: str):
    for part in name.split("."):
        values = values[part]
    return values


@pytest.fixture
def start_dir(tmp_path, monkeypatch) -> Path:
    """Where the user started the command; tests move elsewhere afterwards, as Prefect's flow runs do."""
    start = tmp_path / "start"
    start.mkdir()
    monkeypatch.chdir(start)
    return Path.cwd()


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "elsewhere"


def every_path_relative(start: Path) -> StackSettings:
    """Settings with each path setting given relative to `start`, the current directory."""
    arguments = ["--ui.username", "scientist"]
    for name in path_settings():
        relative = f"relative/{name}"
        if name.endswith("_file"):
            (start / relative).parent.mkdir(parents=True, exist_ok=True)
            (start / relative).write_text("secret")
        arguments += [f"--{name}", json.dumps([relative]) if name == "ingester.data_roots" else relative]
    return load_settings(overrides=parse_dotted_overrides(arguments), environ={})


def test_relative_paths_are_anchored_where_the_command_started(start_dir, elsewhere, monkeypatch):
    settings = load_settings(environ={})  # data_dir: data, as `make run` leaves it
    monkeypatch.chdir(elsewhere)
    assert settings.data_dir == start_dir / "data"
    assert settings.data_path == start_dir / "data"
    assert settings.models_path == start_dir / "data" / "models"
    assert settings.jobs_path == start_dir / "data" / "jobs"
    assert settings.ingest_roots == [start_dir / "data" / "tiled_storage" / "recons"]


def test_every_path_setting_is_written_absolute(start_dir):
    names = path_settings()
    assert {"data_dir", "jobs.models_dir", "jobs.python", "ingester.data_roots", "tiled.api_key_file"} <= set(names)

    written = yaml.safe_load(settings_as_yaml(every_path_relative(start_dir)))

    for name in names:
        value = dotted_value(written, name)
        for path in value if isinstance(value, list) else [value]:
            assert Path(path) == start_dir / "relative" / name, name


def test_paths_survive_a_round_trip_through_the_config_file(start_dir, elsewhere, monkeypatch):
    settings = every_path_relative(start_dir)
    config = write_yaml(start_dir / "settings.yaml", yaml.safe_load(settings_as_yaml(settings)))
    monkeypatch.chdir(elsewhere)

    reloaded = load_settings(config, environ={})

    assert reloaded == settings
    assert reloaded.models_path == start_dir / "relative" / "jobs.models_dir"


def test_a_relative_path_in_a_config_file_is_relative_to_the_current_directory(start_dir, elsewhere):
    config = write_yaml(elsewhere / "settings.yaml", {"data_dir": "scans"})
    assert load_settings(config, environ={}).data_dir == start_dir / "scans"


def test_a_virtual_environments_python_keeps_its_symlink(start_dir):
    """Resolving venv/bin/python would run the base interpreter, outside the venv."""
    (start_dir / "venv" / "bin").mkdir(parents=True)
    (start_dir / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    settings = load_settings(overrides={"jobs": {"python": "venv/bin/python"}}, environ={})
    assert settings.jobs.python == start_dir / "venv" / "bin" / "python"
