"""The command line as a technician meets it in the first hour: help, piped messages, `status` with no
hub, and `doctor` agreeing with `config check` (issue 18).

Each command runs as a process (`python -m hub`), its output piped as in `| tee` or a log.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.main import get_command

from hub.cli.commands import app
from hub.ops.broker import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config/node.example.toml"

BLOCK_AND_RUN = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # as in an install without the extra: the import fails
sys.argv = ["hallhub", *sys.argv[2:]]
from hub.cli.commands import main
main()
"""


def hallhub(*args: str | Path, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`hallhub ARGS` as a process with piped output; `blocked` modules cannot be imported in it."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_AND_RUN, ",".join(blocked), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the CLI, as the words that name it."""
    paths = [path]
    if isinstance(command, TyperGroup):
        context = typer.Context(command)
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            assert sub is not None, name
            paths += _command_paths(sub, (*path, name))
    return paths


COMMANDS = _command_paths(get_command(app))


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "run", "demo", "status", "doctor", "init", "config check", "device add", "central"} <= names


@pytest.mark.parametrize("words", COMMANDS, ids=lambda p: " ".join(p) or "hallhub")
def test_help_shows_no_type_markers(words: tuple[str, ...]) -> None:
    result = hallhub(*words, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    # A flag takes no value: no `<bool>` after it (options that take one show their type).
    assert "<bool>" not in result.stdout, f"`hallhub {' '.join(words)} --help`:\n{result.stdout}"


def test_piped_messages_are_not_wrapped_at_80_columns(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    data_dir = tmp_path / ("a-long-data-directory-name-" * 3)
    config.write_text(
        EXAMPLE.read_text().replace('data_dir = "/var/lib/hallhub"', f'data_dir = "{data_dir}"')
    )
    result = hallhub("config", "check", config)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"ok {config}: node hall-370102-01")
    assert first.endswith(f"data in {data_dir}")
    assert len(first) > 80
    broken = hallhub("config", "check", tmp_path / "missing" / ("x" * 80) / "node.toml")
    assert broken.returncode == 1
    assert len(broken.stderr.splitlines()) == 1, broken.stderr


def test_status_with_no_hub_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = hallhub("status", "--url", url)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line == (
        f"error no hub answers at {url} (connection refused): check that the hub runs"
        f" (systemctl status hallhub) and that api.listen in /etc/hallhub/node.toml is {url}"
    )
    assert "urlopen" not in result.stderr
    assert result.stdout == ""


def _config_errors(text: str) -> list[str]:
    """The `file: key: message` parts of `config check`'s error lines."""
    return [line.removeprefix("error ") for line in text.splitlines() if line.startswith("error ")]


def _doctor_config_lines(text: str) -> list[str]:
    """The config findings of doctor's text report."""
    return [line for line in text.splitlines() if re.match(r"^(OK|ERROR)\s+config\[", line)]


@pytest.mark.parametrize("blocked", [(), ("cv2", "smartcard")], ids=["all extras", "core install"])
def test_doctor_and_config_check_agree_on_the_example_config(blocked: tuple[str, ...]) -> None:
    check = hallhub("config", "check", EXAMPLE, blocked=blocked)
    doctor = hallhub("doctor", "--config", EXAMPLE, "--timeout", "1", blocked=blocked)
    lines = _doctor_config_lines(doctor.stdout)
    if check.returncode == 0:
        assert lines == [f"OK    config[{EXAMPLE}]: node hall-370102-01 (hall 370102), 8 devices"]
        return
    errors = _config_errors(check.stderr)
    assert len(errors) == 2, check.stderr
    assert f'{EXAMPLE}: device[4].transport: device "cam-01" needs hallhub\'s [camera] extra' in errors[0]
    assert f'{EXAMPLE}: device[5].transport: device "pcsc-01" needs hallhub\'s [pcsc] extra' in errors[1]
    assert len(lines) == 2
    for error in errors:
        key, message = error.split(": ", 1)[1].split(": ", 1)
        assert any(key in line and message in line for line in lines), (error, lines)
    # Every other check still ran.
    for family in ("secrets", "port", "broker", "central", "clock", "disk", "watchdog"):
        assert re.search(rf"^\w+\s+{family}\[", doctor.stdout, re.MULTILINE), family


def test_doctor_names_the_device_to_plug_in_and_keeps_opencv_quiet(tmp_path: Path) -> None:
    doctor = hallhub("doctor", "--config", EXAMPLE, "--timeout", "1")
    assert "plug in the ID card reader id-07, or set device[2].port" in doctor.stdout
    assert "plug in the line of the evaluation keypads kp-07, kp-08" in doctor.stdout
    assert "plug the idcard in" not in doctor.stdout
    assert "WARN:" not in doctor.stderr + doctor.stdout, doctor.stderr
    assert "VIDEOIO" not in doctor.stderr
