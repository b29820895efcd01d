"""Command lines built from config dataclasses, so flags and fields cannot drift (STYLE.md section 3).

Each field becomes `--field-name`; its help text is the field's `metadata["help"]`. Booleans are
`--flag/--no-flag`. `Literal[...]`/choices come from `metadata["choices"]`. A field may keep old spellings of its
flag (`aliases`, listed in --help) and may be left out of --help (`hidden`: fault injection for tests). Flags are
never abbreviated: `--step 10` is an error, not `--steps 10`.

Every tool runs its `main` through `run_cli`: a user's mistake (a missing folder, a bad flag value, a config or
checkpoint that does not fit) prints one line naming the flag or path and exits with status 2; a traceback is
shown only for a bug, or with `--debug`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def field(default: Any, help: str, choices: list | tuple | None = None, aliases: tuple[str, ...] = (),
          hidden: bool = False, meta: dict | None = None, **kw) -> Any:
    """A dataclass field with the help text its flag will show, the flag's old spellings (`aliases`, e.g.
    ("--out",)), whether --help hides it (`hidden`: switches only tests use) and metadata of the config's own
    (`meta`, e.g. which fields a resumed run must keep)."""
    meta = {**(meta or {}), "help": help, "choices": list(choices) if choices else None, "aliases": tuple(aliases),
            "hidden": hidden}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


class UserError(Exception):
    """A mistake in a command's flags or inputs: `run_cli` prints its message as one line and exits with 2."""


def program_name(module: str | None = None) -> str:
    """`python -m package.module` for usage lines and error messages (argparse would say `module.py`)."""
    if not module or module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return f"python -m {module}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad flag: the message, and where the flags are listed (not the whole usage block of every flag)."""
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every flag)\n")


def build_parser(cls: type, description: str | None = None,
                 positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    # a config defined outside its tool's module names the tool (`COMMAND: ClassVar[str] = "training.train"`)
    parser = _Parser(prog=program_name(getattr(cls, "COMMAND", cls.__module__)), description=description,
                     allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        origin = typing.get_origin(typ)
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else typ
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        helptext = f.metadata.get("help") or ""
        if "(default:" not in helptext:  # a help text that explains its default itself keeps only that one
            helptext += f" (default: {default!r})"
        if f.metadata.get("hidden"):
            helptext = argparse.SUPPRESS
        names = (f.name,) if f.name in positional else ("--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()))
        dest = {} if f.name in positional else {"dest": f.name}
        if base is bool:
            parser.add_argument(*names, **dest, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        elif typing.get_origin(base) is list:
            inner = typing.get_args(base)[0]
            parser.add_argument(*names, **dest, type=inner, nargs="+", default=default, help=helptext)
        else:
            conv = base if base in (int, float, str) else str
            parser.add_argument(*names, **dest, type=conv, default=default, help=helptext,
                                choices=f.metadata.get("choices"))
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None,
                 positional: tuple[str, ...] = (), check: Callable[[T], None] | None = None) -> tuple[T, bool]:
    """Parse argv into `cls` (its __post_init__ checks values, then `check`, for what only the command line
    requires); returns (config, dry_run). A bad value is a usage error: usage line, message, exit status 2."""
    parser = build_parser(cls, description, positional)
    ns = vars(parser.parse_args(argv))
    dry_run = ns.pop("dry_run")
    ns.pop("debug")  # read by run_cli
    try:
        config = cls(**ns)
        if check is not None:
            check(config)
    except (ValueError, UserError) as e:
        parser.error(str(e))
    return config, dry_run


# Errors a user's input causes. A ValueError counts when our code raised it (its messages name the flag or
# file, STYLE.md section 6); one raised inside a library is a bug here, and shows its traceback.
_OWN_PACKAGES = tuple(str(Path(__file__).resolve().parents[1] / name)
                      for name in ("envs", "pipeline", "training", "tuning"))


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if isinstance(e, OSError) and e.filename is not None:  # a disk full, a read-only folder: named by its path
        return True
    if isinstance(e, ValueError):
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_PACKAGES)
    return False


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError):
        from pipeline.shards import describe_os_error

        return describe_os_error(e)
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ... ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """`if __name__ == "__main__": run_cli(main)`: run a tool's main and exit with its status (an int it returns,
    else 0). A user's mistake prints `<program>: error: <one line>` and exits with 2 (with --debug: the
    traceback); Ctrl-C exits with 130."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"{program_name().removeprefix('python -m ')}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        lost = _lost_ray_process(e)
        if "--debug" in argv or not (lost or _is_user_error(e)):
            raise
        if lost:  # a killed worker or a lost node: what finished is kept (every stage resumes), so say rerun
            print(f"{program_name().removeprefix('python -m ')}: error: a Ray worker or node was lost ({lost}); what "
                  f"finished is kept: rerun the same command to finish", file=sys.stderr)
            sys.exit(1)
        print(f"{program_name().removeprefix('python -m ')}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


# Ray's errors for a process or node that died under a task (read by name: this module does not import Ray).
LOST_RAY_PROCESS = {"ActorDiedError", "NodeDiedError", "WorkerCrashedError", "ActorUnavailableError",
                    "OwnerDiedError", "ObjectLostError"}


def _lost_ray_process(e: BaseException) -> str:
    """The name of the Ray error in `e`'s chain (causes, contexts, a task error's cause) that says a worker or node
    died, else ''."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {k.__name__ for k in type(e).__mro__} & LOST_RAY_PROCESS
        if type(e).__name__ == "UnserializableException":  # an error Ray could not ship back: only its text is left
            names = {n for n in LOST_RAY_PROCESS if n in str(e)}
        if names:
            return sorted(names)[0]
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return ""


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True, default=str)
