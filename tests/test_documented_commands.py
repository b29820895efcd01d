"""Every `python -m ...` command that README.md and docs/*.md show parses with the tool's own parser, spelled the
canonical way: a renamed flag, a typo or an old spelling in the docs fails here, naming the file, the line and the
command. Also: flags are never abbreviated, old spellings (aliases) still parse, hidden fields stay out of --help."""
from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from pipeline.cli import build_parser, field

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("envs", "pipeline", "training", "tuning", "bench")  # `python -m <these>.x` must be a tool in TOOLS

# Each command-line tool: module -> (its config dataclass, the fields given as positional arguments).
TOOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pipeline.collect": ("CollectConfig", ()),
    "pipeline.ingest": ("IngestConfig", ("src",)),
    "pipeline.encode": ("EncodeConfig", ()),
    "pipeline.inspect": ("InspectConfig", ("path",)),
    "pipeline.eval_cases": ("EvalCasesConfig", ()),
    "training.train": ("TrainConfig", ()),
    "training.evaluate": ("EvalConfig", ()),
    "training.demo": ("DemoConfig", ()),
    "training.theory": ("TheoryConfig", ()),
    "tuning.sweep_budget": ("SweepConfig", ()),
    "tuning.report": ("ReportConfig", ("source",)),
}
PLACEHOLDER_VALUE = "1"  # stands in for `<run name>`-style placeholders: a valid path, name and number alike


# ---------------------------------------------------------------------------------------------------------------
# Finding the commands

@dataclass(frozen=True)
class Command:
    doc: str     # file name relative to the repository root
    line: int    # 1-based line where the command starts
    module: str
    text: str    # the command as written (continuations joined)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: `{self.text}`"


_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_INLINE = re.compile(r"`([^`]+)`")
_PYTHON_M = re.compile(r"(?:^|[\s/])python3? -m ([A-Za-z_][\w.]*)")


def _commands_in(doc: str, line: int, joined: str) -> list[Command]:
    return [Command(doc, line, m.group(1), joined[m.start():].strip()) for m in _PYTHON_M.finditer(joined)
            if m.group(1).split(".")[0] in PACKAGES]


def extract_commands(path: Path) -> list[Command]:
    """The `python -m <project module>` commands of a Markdown file: in fenced blocks (one per line, `\\`
    continuations joined) and in inline code (which may wrap onto the next line)."""
    text, doc = path.read_text(), str(path.relative_to(ROOT))
    found: list[Command] = []
    outside = list(text)  # the text with fenced blocks blanked out (newlines kept, so offsets stay line numbers)
    for block in _FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        i = 0
        while i < len(lines):
            start, joined = i, lines[i]
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            found += _commands_in(doc, first + start, joined)
            i += 1
        for k in range(block.start(), block.end()):
            if outside[k] != "\n":
                outside[k] = " "
    rest = "".join(outside)
    for span in _INLINE.finditer(rest):
        found += _commands_in(doc, rest.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split()))
    return found


def to_argv(command: Command) -> list[str]:
    """The arguments after `python -m <module>`, with the docs' notations resolved: a trailing `# comment` is
    dropped, `<placeholder>` becomes a dummy value, `...` (the flags shown above) is dropped, `[--optional x]`
    loses its brackets, and of alternatives (`a|b|c`, `a | b | c`) the first is kept."""
    rest = command.text.split(f"-m {command.module}", 1)[1]
    rest = re.sub(r"<[^<>]*>", PLACEHOLDER_VALUE, rest)
    tokens = shlex.split(rest, comments=True)
    argv: list[str] = []
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token == "|":
            skip_next = True
            continue
        if token == "...":
            continue
        token = token.strip("[]").split("|")[0]
        if token:
            argv.append(token)
    return argv


ALL_COMMANDS = [c for doc in DOCS for c in extract_commands(doc)]


# ---------------------------------------------------------------------------------------------------------------
# Parsing them with the real parsers

def _config_class(module: str) -> tuple[type, tuple[str, ...]]:
    name, positional = TOOLS[module]
    return getattr(importlib.import_module(module), name), positional


def _parse(module: str, argv: list[str]) -> None:
    """Parse argv as the tool would; argparse raises SystemExit on a flag it does not know."""
    cls, positional = _config_class(module)
    build_parser(cls, positional=positional).parse_args(argv)


def _aliases(module: str) -> set[str]:
    cls, _ = _config_class(module)
    return {alias for f in fields(cls) for alias in f.metadata.get("aliases", ())}


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[f"{c.doc}:{c.line}" for c in ALL_COMMANDS])
def test_documented_command_parses(command, capsys):
    if command.module not in TOOLS:
        pytest.fail(f"{command}: {command.module} is not in TOOLS of tests/test_documented_commands.py; add the "
                    f"tool with its config class so its documented commands are checked")
    argv = to_argv(command)
    try:
        _parse(command.module, argv)
    except SystemExit:
        pytest.fail(f"{command} does not parse with {command.module}'s flags: "
                    f"{capsys.readouterr().err.strip().splitlines()[0]}")
    old = sorted({a.split("=")[0] for a in argv} & _aliases(command.module))
    assert not old, f"{command} uses the old spelling {', '.join(old)}; write the flag's canonical name"


def test_the_docs_show_commands_of_every_stage():
    """The extractor finds the commands it should (an extractor that finds nothing would pass everything)."""
    modules = {c.module for c in ALL_COMMANDS}
    assert {"pipeline.collect", "pipeline.ingest", "pipeline.encode", "pipeline.inspect", "pipeline.eval_cases",
            "training.train", "training.evaluate", "training.demo", "tuning.sweep_budget", "tuning.report"} <= modules
    # a continued line is one command; a comment, placeholders, alternatives and `...` are resolved
    continued = [c for c in ALL_COMMANDS if c.doc == "README.md" and c.module == "training.evaluate"
                 and "--checkpoint" in c.text]
    assert continued and to_argv(continued[0])[-2:] == ["--out-dir", "runs/eval"]
    assert to_argv(Command("x.md", 1, "training.evaluate", "python -m training.evaluate ... --sampler fifo | "
                           "df_pyramid --steps 16|32 --checkpoint runs/<run name>  # a comment")) == \
        ["--sampler", "fifo", "--steps", "16", "--checkpoint", "runs/1"]


def test_every_tool_is_in_the_table():
    """A new `python -m` tool must be added to TOOLS, so that its documented commands are checked too."""
    tools = {f"{p.parent.name}.{p.stem}" for package in ("pipeline", "training", "tuning")
             for p in (ROOT / package).glob("*.py") if "\n    run_cli(main)" in p.read_text()}
    assert tools == set(TOOLS)


# ---------------------------------------------------------------------------------------------------------------
# One spelling per flag: no abbreviations, old spellings kept as aliases, test switches hidden

def test_an_abbreviated_flag_is_refused(capsys):
    from training.train import TrainConfig

    parser = build_parser(TrainConfig)
    assert parser.parse_args(["--steps", "10"]).steps == 10
    with pytest.raises(SystemExit):
        parser.parse_args(["--step", "10"])  # argparse's default would read this as --steps
    assert "--step" in capsys.readouterr().err


def test_out_is_an_alias_of_out_dir():
    from pipeline.collect import CollectConfig
    from pipeline.encode import EncodeConfig

    collect = build_parser(CollectConfig)
    assert collect.parse_args(["--out", "a"]).out_dir == "a" == collect.parse_args(["--out-dir", "a"]).out_dir
    assert "--out-dir OUT_DIR, --out OUT_DIR" in collect.format_help()  # the old spelling is listed beside the new
    encode = build_parser(EncodeConfig).parse_args(["--in", "a", "--out", "b"])
    assert (encode.in_dir, encode.out_dir) == ("a", "b")


@dataclass
class _WithHiddenField:
    shown: int = field(1, "a flag users set")
    fault_after: int = field(0, "a switch only tests use", hidden=True)


def test_a_hidden_field_is_left_out_of_help_but_parses():
    parser = build_parser(_WithHiddenField)
    text = parser.format_help()
    assert "--shown" in text and "--fault-after" not in text and "only tests use" not in text
    assert parser.parse_args(["--fault-after", "3"]).fault_after == 3
