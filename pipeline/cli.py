"""Command lines built from config dataclasses, so flags and fields cannot drift (STYLE.md section 3).

Each field becomes `--field-name`; its help text is the field's `metadata["help"]`. Booleans are
`--flag/--no-flag`. `Literal[...]`/choices come from `metadata["choices"]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def field(default: Any, help: str, choices: list | None = None, **kw) -> Any:
    """A dataclass field with the help text its flag will show."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def build_parser(cls: type, description: str | None = None, positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        origin = typing.get_origin(typ)
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else typ
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        helptext = (f.metadata.get("help") or "") + f" (default: {default!r})"
        flag = "--" + f.name.replace("_", "-")
        names = (f.name,) if f.name in positional else (flag,)
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        elif typing.get_origin(base) is list:
            inner = typing.get_args(base)[0]
            parser.add_argument(*names, **({} if f.name in positional else {"dest": f.name}), type=inner, nargs="+",
                                default=default, help=helptext)
        else:
            conv = base if base in (int, float, str) else str
            kwargs = dict(type=conv, default=default, help=helptext, choices=f.metadata.get("choices"))
            if f.name in positional:
                parser.add_argument(f.name, **kwargs)
            else:
                parser.add_argument(flag, dest=f.name, **kwargs)
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None,
                 positional: tuple[str, ...] = ()) -> tuple[T, bool]:
    """Parse argv into `cls` (its __post_init__ checks values); returns (config, dry_run)."""
    parser = build_parser(cls, description, positional)
    ns = vars(parser.parse_args(argv))
    dry_run = ns.pop("dry_run")
    try:
        config = cls(**ns)
    except ValueError as e:
        parser.error(str(e))
    return config, dry_run


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True, default=str)
