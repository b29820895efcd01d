"""The sweep grid: which (structure, memory length, compression, budget) combinations a sweep runs.

`paper` is the set the paper ran (Table 1): prepend and channel concat with uncompressed memory of 16/48/112
frames, and memory 48 compressed to budgets 8/16/32/48 (joint for prepend, modulated for concat, App. G).
`laptop` is what two CPU cores can train in an hour on 8x8 maze frames (`--preset laptop`): prepend with memory
4, 8 and 16, and memory 16 compressed to 4 frames (joint). `full` is every combination of the flags' values.
Flags restrict any grid.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from training.choices import COMPRESSIONS, STRUCTURES

MEMORY_LENGTHS = (16, 48, 112)
BUDGETS = (8, 16, 32, 48)
GRIDS = ("paper", "laptop", "full")
# App. G: "the prepending and channel concatenation structures respectively adopt the joint compression and
# modulated compression"; cross attention is paired with joint in the full grid only.
PAPER_COMPRESSION = {"prepend": "joint", "concat": "modulated", "cross_attn": "joint"}


@dataclass(frozen=True, order=True)
class Combo:
    memory: str
    memory_length: int
    compression: str
    budget: int  # frames kept after compression; equals memory_length when compression is "none"

    @property
    def name(self) -> str:
        tail = "" if self.compression == "none" else f"-{self.compression}{self.budget}"
        return f"{self.memory}-m{self.memory_length}{tail}"


def paper_grid() -> list[Combo]:
    combos = []
    for s in ("prepend", "concat"):
        combos += [Combo(s, m, "none", m) for m in MEMORY_LENGTHS]
        combos += [Combo(s, 48, PAPER_COMPRESSION[s], b) for b in BUDGETS]
    return combos


def laptop_grid() -> list[Combo]:
    return [Combo("prepend", m, "none", m) for m in (4, 8, 16)] + [Combo("prepend", 16, "joint", 4)]


def full_grid() -> list[Combo]:
    combos = []
    for s, m, c in itertools.product(STRUCTURES, MEMORY_LENGTHS, COMPRESSIONS):
        if c == "none":
            combos.append(Combo(s, m, c, m))
        else:
            combos += [Combo(s, m, c, b) for b in BUDGETS if b <= m]
    return combos


def build_grid(grid: str, structures=(), memory_lengths=(), compressions=(), budgets=()) -> list[Combo]:
    """The grid named `grid` restricted to the given values (empty = no restriction).

    Raises ValueError naming the flag for unknown values, a budget above every memory length, or an empty result.
    """
    _check("--grid", [grid], GRIDS)
    _check("--structures", structures, STRUCTURES)
    _check("--compressions", compressions, COMPRESSIONS)
    for flag, values in (("--memory-lengths", memory_lengths), ("--budgets", budgets)):
        bad = [v for v in values if int(v) <= 0]
        if bad:
            raise ValueError(f"{flag}: values must be positive, got {bad}")
    longest = max(memory_lengths or MEMORY_LENGTHS)
    too_big = [b for b in budgets if b > longest]
    if too_big and set(compressions) != {"none"}:
        raise ValueError(f"--budgets {too_big}: above the longest memory length ({longest}), so there is nothing to "
                         f"compress; use budgets <= --memory-lengths")
    combos = {"paper": paper_grid, "laptop": laptop_grid, "full": full_grid}[grid]()
    if grid == "full" and memory_lengths:  # full grid: new lengths/budgets are allowed, paper grid only filters
        combos = [Combo(s, m, c, b) for s, m, c in itertools.product(STRUCTURES, memory_lengths, COMPRESSIONS)
                  for b in ([m] if c == "none" else (budgets or BUDGETS)) if b <= m]
    keep = [c for c in combos
            if (not structures or c.memory in structures)
            and (not memory_lengths or c.memory_length in memory_lengths)
            and (not compressions or c.compression in compressions)
            and (not budgets or c.compression == "none" or c.budget in budgets)]
    if not keep:
        raise ValueError(f"the {grid} grid restricted by --structures {list(structures)} --memory-lengths "
                         f"{list(memory_lengths)} --compressions {list(compressions)} --budgets {list(budgets)} is "
                         f"empty; the paper grid is {[c.name for c in paper_grid()]}")
    return sorted(set(keep))


def _check(flag: str, values, valid) -> None:
    bad = [v for v in values if v not in valid]
    if bad:
        raise ValueError(f"{flag}: unknown value(s) {bad}; expected one of {list(valid)}")
