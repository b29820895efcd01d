"""Every tool, run as a user runs it: a mistake (missing folder, bad flag value) gives one line naming the flag or
path and exit status 2, no traceback (unless --debug); usage lines say `python -m package.module`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]

# (module, arguments; {missing} is a folder that does not exist, {tmp} a fresh one), what the message must name
MISTAKES = [
    ("pipeline.collect", "--episodes 0", "--episodes"),
    ("pipeline.collect", "--env nope", "--env"),
    ("pipeline.ingest", "--format worldmem {missing} --out-dir {tmp}/out", "{missing}"),
    ("pipeline.encode", "--in-dir {missing} --out-dir {tmp}/out --backend local", "{missing}"),
    ("pipeline.inspect", "{missing}", "{missing}"),
    ("pipeline.eval_cases", "--data-dir {missing}", "{missing}"),
    ("training.train", "--data-dir {missing} --out-dir {tmp}/out --backend local", "--data-dir {missing}"),
    ("training.train", "--steps ten", "--steps"),
    ("training.evaluate", "", "--checkpoint is required"),
    ("training.evaluate", "--checkpoint {missing}", "{missing}"),
    ("training.demo", "--short-memory 99 --out-dir {tmp}/demo", "--short-memory"),
    ("training.theory", "--seed x", "--seed"),
    ("tuning.sweep_budget", "--data-dir {missing} --out {tmp}/sweep --dry-run", "--data-dir {missing}"),
    ("tuning.sweep_budget", "--data-dir {missing} --out {tmp}/sweep", "--data-dir {missing}"),
    ("tuning.report", "{missing}", "{missing}"),
    # --dry-run stops where the real run would stop at once
    ("pipeline.encode", "--dry-run --in-dir {missing} --out-dir {tmp}/out", "{missing}"),
    ("training.train", "--dry-run --data-dir {missing}", "--data-dir {missing}"),
    ("training.evaluate", "--dry-run --checkpoint {missing}", "{missing}"),
]


def _run(module: str, args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    missing = tmp_path / "no-such-folder"
    argv = args.format(missing=missing, tmp=tmp_path).split()
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    return proc, str(missing)


@pytest.mark.parametrize("module,args,named", MISTAKES, ids=[f"{m} {a}" for m, a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_status_2(tmp_path, module, args, named):
    proc, missing = _run(module, args, tmp_path)
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert 1 <= len(errors) <= 2, proc.stderr      # the message (and, for a usage error, where --help is)
    assert errors[0].startswith((f"{module}: error: ", f"python -m {module}: error: "))
    assert named.format(missing=missing) in errors[0]


def test_debug_shows_the_traceback(tmp_path):
    proc, _ = _run("training.evaluate", "--checkpoint {missing} --debug", tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_help_names_the_module_and_keeps_the_examples(tmp_path):
    train = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60).stdout
    assert train.startswith("usage: python -m training.train ")
    assert "--window 16 \\\n        --data-dir" in train                   # the continued example keeps its break
    collect = subprocess.run([sys.executable, "-m", "pipeline.collect", "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout
    out_help = collect[collect.index("\n  --out-dir OUT_DIR") + 1:].split("\n  --")[0]
    assert "(default: data/<env>)" in out_help and out_help.count("default:") == 1


def test_run_cli_tells_mistakes_from_bugs(capsys):
    def mistake(argv):
        raise UserError("--out /x: not writable")

    def our_check(argv):
        from training.demo import DemoConfig

        DemoConfig(episodes=0)                                      # a ValueError raised by our code names the flag

    def bug(argv):
        return int("not a number")                                  # raised inside Python itself: a bug, traceback

    for main in (mistake, our_check):
        with pytest.raises(SystemExit) as e:
            run_cli(main, [])
        assert e.value.code == 2
    assert "error: --out /x: not writable" in capsys.readouterr().err
    with pytest.raises(ValueError, match="invalid literal"):
        run_cli(bug, [])
    with pytest.raises(UserError):
        run_cli(mistake, ["--debug"])
    with pytest.raises(SystemExit) as e:
        run_cli(lambda argv: 1, [])
    assert e.value.code == 1


def test_dry_run_fails_where_the_real_run_would_fail_at_once(tmp_path):
    """--dry-run of training checks the data and builds the model on its shape: exit 2 naming the flags, and 0
    for a config that can train."""
    from test_train import make_latents

    data = make_latents(tmp_path / "latents")
    base = (f"--dry-run --data-dir {data} --out-dir {tmp_path}/out --backend local --window 4 --memory-length 4 "
            "--budget 4")
    bad, _ = _run("training.train", base + " --memory none --compression joint", tmp_path)
    assert bad.returncode == 2 and "--compression" in bad.stderr and "Traceback" not in bad.stderr
    good, _ = _run("training.train", base, tmp_path)
    assert good.returncode == 0, good.stderr
    assert not (tmp_path / "out").exists()                          # a dry run writes nothing


def test_a_lost_ray_worker_says_rerun_in_one_line(capsys):
    """A node lost under Ray Data (the chaos suite's encode-node case) is not a traceback: one line, status 1."""
    from ray.exceptions import ActorDiedError

    def lost(argv):
        try:
            raise ActorDiedError()
        except ActorDiedError as e:
            raise RuntimeError("listing the input files failed") from e   # how Ray Data wraps it

    with pytest.raises(SystemExit) as stop:
        run_cli(lost, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert "ActorDiedError" in err[0] and "rerun the same command" in err[0]
    with pytest.raises(RuntimeError):                               # --debug keeps the traceback
        run_cli(lost, ["--debug"])

    from ray.exceptions import UnserializableException

    def unshippable(argv):                                          # what a lost FooterReader actor raised
        raise UnserializableException("ray.exceptions.ActorDiedError: The actor died unexpectedly")

    with pytest.raises(SystemExit) as stop:
        run_cli(unshippable, [])
    assert stop.value.code == 1 and "ActorDiedError" in capsys.readouterr().err
