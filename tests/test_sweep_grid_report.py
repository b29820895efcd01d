"""The sweep grid and the report (tables, CSV, plots) built from trial records: no Ray needed."""
import csv
import math

import pytest

from tuning.grid import build_grid, paper_grid
from tuning.report import markdown_tables, pareto_front, pearson, write_report


def test_paper_grid_is_table_1():
    names = {c.name for c in paper_grid()}
    assert len(names) == 14
    assert {"prepend-m16", "prepend-m48", "prepend-m112", "prepend-m48-joint8", "concat-m48-modulated32"} <= names
    assert not any(c.memory == "cross_attn" for c in paper_grid())


def test_grid_restriction_and_errors_name_the_flag():
    assert [c.name for c in build_grid("paper", structures=["prepend"], memory_lengths=[16, 48],
                                       compressions=["none"])] == ["prepend-m16", "prepend-m48"]
    with pytest.raises(ValueError, match="--structures"):
        build_grid("paper", structures=["prepnd"])
    with pytest.raises(ValueError, match="empty"):
        build_grid("paper", structures=["cross_attn"])
    with pytest.raises(ValueError, match="--budgets"):
        build_grid("full", memory_lengths=[16], budgets=[32])
    full = build_grid("full", memory_lengths=[16], budgets=[8, 16])
    assert all(c.budget <= c.memory_length for c in full) and any(c.memory == "cross_attn" for c in full)


def test_laptop_preset_is_the_demo_recipe_on_the_laptop_grid(tmp_path):
    from tuning.sweep_budget import SweepConfig, main

    cfg = SweepConfig(preset="laptop")
    assert cfg.grid == "laptop" and SweepConfig(preset="laptop", grid="paper").grid == "paper"
    combos = build_grid(cfg.grid)
    assert {c.name for c in combos} == {"prepend-m4", "prepend-m8", "prepend-m16", "prepend-m16-joint4"}
    assert any(c.budget < c.memory_length for c in combos)              # one compressed row
    values = cfg.resolved()
    assert (values.lr, values.revisit_share, values.model_size) == (1e-3, 0.9, "tiny")
    assert SweepConfig(preset="laptop", steps=10).resolved().steps == 10       # a given flag replaces the preset's
    assert values.max_concurrent == 1   # trials one at a time: 4 at once on 2 cores train slower in all
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="--cases"):            # --dry-run checks --cases up front
        main(["--preset", "laptop", "--data-dir", str(tmp_path), "--cases", str(tmp_path / "none.parquet"),
              "--dry-run"])


def _trial(name, memory, m, comp, budget, r, decay, flops):
    return {"name": name, "status": "ok", "error": "",
            "config": {"memory": memory, "memory_length": m, "compression": comp, "budget": budget},
            "metrics": {"retrieval/0-16": r, "retrieval/16-48": r / 2, "retrieval/48-112": 0.0, "ssim/0-16": 0.5,
                        "psnr/0-16": 20.0, "psnr/16-32": 20 - decay / 2, "psnr/32-48": 20 - decay * 0.8,
                        "psnr/48-64": 20 - decay, "psnr_max_decay": decay, "probe_accuracy": 0.97,
                        "flops_per_frame": flops, "sec_per_frame": flops / 1e9}}


def test_report_files_hold_the_trials_numbers(tmp_path):
    trials = [_trial("prepend-m16", "prepend", 16, "none", 16, 0.6, 2.0, 1e9),
              _trial("prepend-m48", "prepend", 48, "none", 48, 0.8, 3.0, 3e9),
              _trial("prepend-m48-joint8", "prepend", 48, "joint", 8, 0.7, 2.5, 1.5e9),
              {"name": "concat-m16", "status": "error", "error": "RuntimeError: boom",
               "config": {"memory": "concat", "memory_length": 16, "compression": "none", "budget": 16}, "metrics": {}}]
    trials[0]["calibration"] = {"ground truth": {"0-16": 1.0, "16-48": 0.95, "48-112": 0.9},
                                "copy m=16": {"0-16": 0.97, "16-48": 0.0, "48-112": 0.0}}
    trials[1]["calibration"] = {"copy m=48": {"0-16": 0.97, "16-48": 0.96, "48-112": 0.02}}
    trials[1]["metrics"].update({"retrieval_lo/0-16": 0.7, "retrieval_hi/0-16": 0.88, "retrieval_n/0-16": 100})
    paths = write_report(trials, tmp_path)
    md = paths["results_md"].read_text()
    assert "| prepend | 48 | joint | 8 | 0.70 | 0.35 | 0.00 | 0.97 |" in md
    assert "| prepend | 48 | N/A | N/A | 0.80 [0.70, 0.88] (100) | 0.40 | 0.00 | 0.97 |" in md   # with its interval
    calib = [line for line in md.splitlines() if line.startswith("| *calibration")]             # beside the trials
    assert calib == ["| *calibration: ground truth* | | | | 1.00 | 0.95 | 0.90 | |",
                     "| *calibration: copy m=16* | | | | 0.97 | 0.00 | 0.00 | |",
                     "| *calibration: copy m=48* | | | | 0.97 | 0.96 | 0.02 | |"]
    assert "| prepend | 16 | N/A | N/A | 20.00 | 19.00 | 18.40 | 18.00 | 2.00 |" in md
    assert "concat-m16" in md and "boom" in md  # failed trial reported with its error
    assert "r = 1.00" in md  # retrieval rises exactly with decay in these records
    rows = list(csv.DictReader(open(paths["results_csv"])))
    assert [r["name"] for r in rows] == [t["name"] for t in trials]
    assert float(rows[1]["retrieval/0-16"]) == 0.8
    for key in ("retrieval_vs_budget", "retrieval_vs_decay", "retrieval_vs_cost"):
        assert paths[key].stat().st_size > 1000 and paths[key].read_bytes()[:4] == b"\x89PNG"


def _curve(rates: dict[str, float], n: int = 20) -> dict:
    return {b: {"rate": r, "lo": max(0.0, r - 0.1), "hi": min(1.0, r + 0.1), "n": n, "successes": round(r * n)}
            for b, r in rates.items()}


def test_retrieval_vs_d_per_trial_beside_its_copy_oracle(tmp_path):
    """The sweep's retrieval-vs-d view: each trial's model curve and the copy oracle of its own memory length."""
    trials = [_trial("prepend-m4", "prepend", 4, "none", 4, 0.3, 1.0, 1e9),
              _trial("prepend-m16", "prepend", 16, "none", 16, 0.5, 1.0, 2e9)]
    trials[0]["curves"] = {"kind": "exact", "rows": {
        "model m=4": _curve({"2-4": 0.5, "4-8": 0.05, "8-12": 0.0}),
        "copy m=4": _curve({"2-4": 1.0, "4-8": 0.0, "8-12": 0.0})}}
    trials[1]["curves"] = {"kind": "exact", "rows": {
        "model m=16": _curve({"2-4": 0.5, "4-8": 0.4, "8-12": 0.35}),
        "copy m=16": _curve({"2-4": 1.0, "4-8": 1.0, "8-12": 1.0}),
        "copy m=4": _curve({"2-4": 1.0, "4-8": 0.0, "8-12": 0.0})}}   # another trial's oracle: not its row
    paths = write_report(trials, tmp_path)
    md = paths["results_md"].read_text()
    assert "| prepend-m4 | model m=4 | 0.50 (20) | 0.05 (20) | 0.00 (20) |" in md
    assert "| prepend-m16 | copy m=16 | 1.00 (20) | 1.00 (20) | 1.00 (20) |" in md
    assert "| prepend-m16 | copy m=4 |" not in md
    assert paths["retrieval_vs_d"].read_bytes()[:4] == b"\x89PNG"
    no_curves = [{k: v for k, v in t.items() if k != "curves"} for t in trials]   # records of an older sweep
    assert "retrieval_vs_d" not in write_report(no_curves, tmp_path / "old")


def test_pareto_and_correlation():
    pts = [(1, 0.5), (2, 0.4), (3, 0.9), (0.5, 0.1)]
    assert pareto_front(pts) == [3, 0, 2]
    assert math.isclose(pearson([1, 2, 3], [2, 4, 6]), 1.0)
    assert math.isnan(pearson([1], [1]))


def test_markdown_orders_structures_then_lengths():
    trials = [_trial("b", "concat", 16, "none", 16, 0.1, 1, 1), _trial("a", "prepend", 112, "none", 112, 0.2, 1, 1),
              _trial("c", "prepend", 16, "none", 16, 0.3, 1, 1)]
    body = markdown_tables(trials).split("### Table 2")[0]
    assert body.index("| prepend | 16 |") < body.index("| prepend | 112 |") < body.index("| concat | 16 |")
