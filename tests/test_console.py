"""pipeline/console.py: a bar on a terminal, plain lines in a log, one line per emit, a quiet local Ray."""
from __future__ import annotations

import builtins
import io
import os

from pipeline.console import Progress, emit, quiet_ray


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_in_a_log_have_no_carriage_return_or_colour():
    out = io.StringIO()
    bar = Progress(3, "encode", unit="ep", stream=out, every_sec=1e-9)
    for i in range(3):
        bar.update(1, postfix=f"{i + 1} shards")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b[" not in out.getvalue()
    assert len(lines) == 3 and len(set(lines)) == 3                     # one line per update here, none repeated
    assert lines[0].startswith("encode: 1/3 ep (33%)") and "eta" in lines[0] and "ep/s" in lines[0]
    assert lines[-1].startswith("encode: 3/3 ep (100%)") and lines[-1].endswith("; 3 shards")


def test_plain_lines_come_at_most_every_period_and_once_at_the_end():
    out = io.StringIO()
    with Progress(100, "collect maze", unit="ep", stream=out, every_sec=3600) as bar:
        for _ in range(100):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collect maze: 100/100 ep (100%) in ")
    quiet = io.StringIO()
    with Progress(5, "train", unit="step", stream=quiet, every_sec=0) as bar:  # the caller prints status lines
        bar.update(5)
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_redrawn_bar(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    with Progress(4, "evaluate m=8", unit="case", stream=out) as bar:
        bar.update(4)
    assert "\r" in out.getvalue() and "4/4" in out.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")                                   # https://no-color.org: plain lines
    out = Terminal()
    with Progress(4, "evaluate m=8", unit="case", stream=out) as bar:
        bar.update(4)
    assert "\r" not in out.getvalue() and "\x1b[" not in out.getvalue()


def test_emit_writes_once_when_print_is_patched(monkeypatch, capsys):
    """Ray Train patches print() in its workers into a logger call plus a copy to stdout: two lines per print."""
    original = builtins.print

    def tee(*args, **kwargs):
        original(*args, **kwargs)
        original(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", tee)
    emit("[train] step 1/12 loss 0.41")
    assert capsys.readouterr().out == "[train] step 1/12 loss 0.41\n"


def _unset(monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, "")  # records the variable's state, so the test's settings are undone after it
    monkeypatch.delenv(name)


def test_quiet_ray_turns_colour_off_for_a_log(monkeypatch):
    _unset(monkeypatch, "RAY_COLOR_PREFIX")
    _unset(monkeypatch, "RAY_DATA_LOGGING_CONFIG")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    quiet_ray()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    config = os.environ["RAY_DATA_LOGGING_CONFIG"]
    import yaml

    handlers = yaml.safe_load(open(config))["handlers"]
    assert handlers["console"]["level"] == "WARNING" and "level" not in handlers["file"]


def test_quiet_ray_keeps_a_setting_the_user_made(monkeypatch):
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")
    _unset(monkeypatch, "RAY_DATA_LOGGING_CONFIG")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    quiet_ray()
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
