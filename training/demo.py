"""The whole pipeline on the built-in maze, on CPU, in one command (what `make demo` runs).

    python -m training.demo                    # runs/demo: about 15 minutes on 2 busy cores
    python -m training.demo --quick            # runs/demo-quick: a smoke run of every stage (~2 minutes)
    python -m training.demo --dry-run          # print the resolved config

Stages, each resumable, and skipped on a rerun once finished (<out>/stages.json):
  1 collect     pipeline.collect: maze episodes of the lookback agent (Ray actors), for
                training (seed --seed) and held out for evaluation (seed --seed + 1)  -> <out>/episodes, <out>/heldout
  2 encode      pipeline.encode --encoder identity (Ray Data) -> <out>/latents, <out>/heldout-latents
  3 eval cases  pipeline.eval_cases --kinds exact on the held-out episodes: exact revisits (the agent looks away and
                back, so the revisit frame equals a frame d steps earlier), binned by d -> <out>/heldout-latents
  4 train       training.train: the tiny denoiser, Ray Train, 1 worker, memory dropout -> <out>/train/demo
  5 evaluate    training.evaluate of the one model at memory --short-memory and --memory-length, paired on the same
                cases and noise, beside the calibration rows (ground truth, copy from memory, last frame, another
                episode)                                                               -> <out>/eval
Everything is logged to one MLflow store, <out>/mlflow.db (artifacts in <out>/mlartifacts).

The question the final table answers (paper Sec. 5, Table 1): where only the longer memory holds the last sighting
of the revisited view (short memory < d <= memory length), does the long memory retrieve it more often than the
short one on the same cases? And where neither holds it (d > memory length), is the model no better than the
baselines that need no memory? See docs/results.md for what was measured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import field, parse_config, run_cli, to_json
from training.choices import MEMORIES

# --quick overrides these fields (only where the command line left the default).
QUICK = dict(out_dir="runs/demo-quick", episodes=4, heldout_episodes=4, length=128, batch_size=4, memory_length=8,
             window=4, train_steps=12, eval_cases=1, rollout_cases=0, eval_steps=4)
STAGES = ("collect", "encode", "eval_cases", "train", "evaluate")


@dataclass
class DemoConfig:
    out_dir: str = field("runs/demo", "output folder of every stage, and the MLflow store", aliases=("--out",))
    quick: bool = field(False, f"tiny sizes for a smoke test: {QUICK}")
    episodes: int = field(200, "maze episodes to train on (lookback agent; rendering 8x8 frames takes seconds)")
    heldout_episodes: int = field(60, "held-out maze episodes (another seed) the evaluation cases are drawn from")
    length: int = field(300, "frames per episode")
    resolution: int = field(8, "frame size in pixels (square); 16 costs ~5x per step (spatial attention)")
    maze_size: int = field(9, "maze grid size in cells (odd)")
    memory: str = field("prepend", "memory structure of the denoiser", choices=MEMORIES)
    memory_length: int = field(16, "memory frames m")
    short_memory: int = field(4, "the same model is also evaluated with only this many memory frames (paired)")
    window: int = field(8, "current window w")
    batch_size: int = field(8, "clips per training step")
    train_steps: int = field(2500, "optimizer steps")
    lr: float = field(1e-3, "Adam learning rate")
    eval_cases: int = field(300, "exact-revisit cases per bin of d (0-16, 16-48, 48-112): about 230 fall where only "
                                 "the long memory holds the source")
    rollout_cases: int = field(2, "64-frame rollouts for PSNR by segment (0 = skip)")
    revisit_share: float = field(0.9, "share of training windows placed just before an exact revisit in reach")
    memory_dropout: float = field(0.5, "share of training windows whose memory keeps only its last k frames")
    eval_steps: int = field(8, "denoising steps per AR step when sampling")
    seed: int = field(0, "seed of every stage")

    def __post_init__(self) -> None:
        if self.quick:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        for name in ("episodes", "heldout_episodes", "length", "resolution", "memory_length", "window", "batch_size",
                     "train_steps", "eval_cases", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        if not 0 <= self.short_memory < self.memory_length:
            raise ValueError(f"--short-memory {self.short_memory}: expected 0 <= short memory < --memory-length "
                             f"{self.memory_length}")

    @property
    def root(self) -> Path:
        return Path(self.out_dir).expanduser().resolve()


class Stages:
    """<out>/stages.json: stage name -> its result; a listed stage is finished and is not run again."""

    def __init__(self, root: Path):
        self.path = root / "stages.json"
        self.done: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, fn) -> dict:
        if name in self.done:
            print(f"[demo] {name}: done before, skipped", flush=True)
            return self.done[name]
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        result = fn()
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[demo] {name}: {result['seconds']} s", flush=True)
        from pipeline.shards import write_json_atomic

        self.done[name] = result
        write_json_atomic(self.done, self.path)
        return result


def collect(cfg: DemoConfig) -> dict:
    from pipeline.collect import CollectConfig, run_collect

    dirs = {}
    for name, episodes, seed in (("episodes", cfg.episodes, cfg.seed), ("heldout", cfg.heldout_episodes, cfg.seed + 1)):
        out = run_collect(CollectConfig(env="maze", agent="lookback", episodes=episodes, length=cfg.length,
                                        resolution=cfg.resolution, maze_size=cfg.maze_size, seed=seed,
                                        out_dir=str(cfg.root / name), workers=2,
                                        episodes_per_shard=max(1, episodes // 2)), progress=True)
        if out["failed"]:
            raise RuntimeError(f"collect: shards {out['failed']} failed (see {cfg.root / name}/failures.jsonl); "
                               f"rerun the same command to retry them")
        dirs[name] = out["out_dir"]
    return {"dir": dirs["episodes"], "heldout_dir": dirs["heldout"]}


def encode(cfg: DemoConfig) -> dict:
    from pipeline.encode import EncodeConfig, run_encode

    rows = {}
    for src, dst in (("episodes", "latents"), ("heldout", "heldout-latents")):
        report = run_encode(EncodeConfig(in_dir=str(cfg.root / src), out_dir=str(cfg.root / dst),
                                         encoder="identity", backend="ray", workers=1))
        rows[dst] = report["rows_in_out_manifest"]
    return {"dir": str(cfg.root / "latents"), "heldout_dir": str(cfg.root / "heldout-latents"), "rows": rows}


def eval_cases(cfg: DemoConfig) -> dict:
    """Exact revisits of the held-out episodes: judged on pixels (SSIM / nearest view), so no scene probe."""
    from pipeline.eval_cases import build_eval_cases, build_rollout_cases

    latents = cfg.root / "heldout-latents"
    cases = build_eval_cases(latents, cases_per_bin=cfg.eval_cases, max_memory=112, horizon=cfg.window,
                             seed=cfg.seed, window=cfg.window, kinds=["exact"])
    rollouts = build_rollout_cases(latents, num_cases=cfg.rollout_cases, seed=cfg.seed) if cfg.rollout_cases else None
    return {"cases": str(cases), "rollout_cases": str(rollouts) if rollouts else ""}


def train_config(cfg: DemoConfig):
    from training.tracking import default_tracking_uri
    from training.train import TrainConfig

    return TrainConfig(data_dir=str(cfg.root / "latents"), out_dir=str(cfg.root / "train"), name="demo",
                       model_size="tiny", memory=cfg.memory, memory_length=cfg.memory_length, budget=cfg.memory_length,
                       window=cfg.window, batch_size=cfg.batch_size, steps=cfg.train_steps, lr=cfg.lr,
                       revisit_share=cfg.revisit_share, memory_dropout=cfg.memory_dropout,
                       seed=cfg.seed, log_every=max(1, cfg.train_steps // 15),
                       checkpoint_every=max(1, cfg.train_steps // 3), backend="ray", num_workers=1,
                       tracking_uri=default_tracking_uri(cfg.root), experiment="memvid-demo")


def train(cfg: DemoConfig) -> dict:
    from training.train import run_training

    out = run_training(train_config(cfg))
    return {"checkpoint": out["checkpoint"], "mlflow_run_id": out["mlflow_run_id"],
            "final_loss": out["metrics"].get("loss")}


def evaluate(cfg: DemoConfig, checkpoint: str, rollout_cases: str) -> dict:
    from training.evaluate import EvalConfig, run_evaluation
    from training.tracking import default_tracking_uri

    metrics = run_evaluation(EvalConfig(
        checkpoint=str(Path(checkpoint).parent), cases=str(cfg.root / "heldout-latents" / "eval_cases.parquet"),
        memory_lengths=sorted({cfg.short_memory, cfg.memory_length}),
        rollout_cases=rollout_cases, out_dir=str(cfg.root / "eval"), steps=cfg.eval_steps,
        num_rollout_cases=cfg.rollout_cases, batch_size=4, num_videos=6, device="cpu", seed=cfg.seed,
        tracking_uri=default_tracking_uri(cfg.root), experiment="memvid-demo"))
    return {"dir": str(cfg.root / "eval"), "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or finish) every stage; returns stage name -> result."""
    from pipeline.shards import check_config

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the folder's own path is not a setting it must match (an older demo saved it, as "out")
    check_config(cfg.root, {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out_dir"},
                 flag_hint="--out-dir", ignore=("out",))
    stages = Stages(cfg.root)
    import ray

    from pipeline.console import start_ray

    # More logical CPUs than cores: training workers and Ray Data reads must not starve each other (stack-facts 2b).
    started = any(s not in stages.done for s in STAGES[:4]) and start_ray(num_cpus=4)
    try:
        stages.run("collect", lambda: collect(cfg))
        stages.run("encode", lambda: encode(cfg))
        cases = stages.run("eval_cases", lambda: eval_cases(cfg))
        trained = stages.run("train", lambda: train(cfg))
    finally:
        if started:
            ray.shutdown()
    stages.run("evaluate", lambda: evaluate(cfg, trained["checkpoint"], cases["rollout_cases"]))
    return stages.done


def _round(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def summary(cfg: DemoConfig, done: dict) -> str:
    from training.tracking import default_tracking_uri, experiment_id_of, ui_instructions

    uri = default_tracking_uri(cfg.root)
    lines = [f"[demo] finished in {sum(s.get('seconds', 0) for s in done.values()):.0f} s of stage time. Results:",
             f"  episodes      {done['collect']['dir']}",
             f"  latents       {done['encode']['dir']} (eval cases: {done['eval_cases']['cases']})",
             f"  checkpoint    {done['train']['checkpoint']} (final loss {_round(done['train']['final_loss'])})",
             f"  evaluation    {done['evaluate']['dir']}/results.md, results.json, videos (GIF/MP4), plots (PNG)",
             f"  MLflow        experiment 'memvid-demo', run {done['train']['mlflow_run_id']} (training + evaluation)",
             ui_instructions(uri, experiment_id_of(uri, "memvid-demo"))]
    return "\n".join(lines + headline(Path(done["evaluate"]["dir"])))


def headline(eval_dir: Path) -> list[str]:
    """The memory bottleneck in one table (rates by which memory holds the last sighting), the paired test of the
    long vs the short memory, and one retrieved and one missed case as GIFs."""
    from training.eval_report import coverage_rank, coverage_table

    path = eval_dir / "results.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    lines = ["", *coverage_table(results)]
    for pair in results.get("paired", []):
        for group, s in sorted(pair.get("by_coverage", {}).get("exact", {}).items(), key=lambda g: coverage_rank(g[0])):
            lines.append(f"Paired {pair['a']} vs {pair['b']}, {group}: {s['n']} cases, {s['a_only']} retrieved only "
                         f"by {pair['a']}, {s['b_only']} only by {pair['b']}, McNemar p = {s['p']:.2g}")
    short, long = min(results["memory_lengths"]), max(results["memory_lengths"])
    for outcome in ("retrieved", "missed"):  # prefer a case that only the long memory holds
        gifs = sorted(eval_dir.glob(f"retrieval*-{outcome}.gif"),
                      key=lambda g: not short < int(g.stem.split("-d")[-1].split("-")[0]) <= long)
        if gifs:
            lines.append(f"A {outcome} case at memory {long} (memory | generated | ground truth): {gifs[0]}")
    lines.append("Measured figures and what they mean: docs/results.md.")
    return lines


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(DemoConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return
    done = run_demo(cfg)  # training.evaluate prints its results.md tables
    print(summary(cfg, done), flush=True)


if __name__ == "__main__":
    run_cli(main)
