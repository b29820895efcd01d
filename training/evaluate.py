"""Evaluate a trained denoiser on the saved evaluation cases (paper Sec. 5 Tables 1-2, App. H Tables 3-4).

    python -m training.evaluate --checkpoint runs/train/tiny-prepend-m16-none-w16-s0/local/checkpoint_00001000 \
        --cases runs/demo/latents/eval_cases.parquet --out-dir runs/eval
    python -m training.evaluate --checkpoint ... --cases ... --sampler fifo --steps 16 --device cuda

Generation: Meta-ARVDM (`training.sampler.sample`) with a preset schedule (`--sampler`, `--steps`) from the
case's ground-truth memory (its last `memory_length` real frames, padding dropped) and its return-path actions.
Figures (definitions in training/metrics.py):
  retrieval/<bin>   share of retrieval cases whose revisit frames the scene probe reads as the ground truth's
                    labels (strict majority of revisit frames, all probe heads equal); judged only if the probe's
                    held-out accuracy on real frames >= 0.95 (`probe_valid`); bins 0-16, 16-48, 48-112 (Table 1)
  ssim/<bin>        SSIM of generated vs ground-truth revisit frames (Table 2)
  psnr/<segment>    PSNR per 16-frame segment of 64-frame rollouts from ground-truth memory; psnr_max_decay =
                    psnr/0-16 - psnr/48-64 (Tables 3-4)
  sec_per_frame, flops_per_frame   sampling cost per generated frame (wall clock here; FLOPs from training.cost)
Outputs in --out-dir: results.json, results.md (Table 1/2/3 layouts), side-by-side GIF/MP4 (ground truth |
generated, generated outlined red, given context blue), PNG plots; all logged to MLflow (the checkpoint's
training run if its store has it, else a new run).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import field, parse_config, to_json
from training import metrics as M
from training.eval_report import _json_safe, results_markdown, save_videos, to_pixels

SAMPLERS = ("outpainting", "fifo", "df_pyramid", "df_chunked")
RESULT_KEYS = tuple([f"retrieval/{b}" for b in M.GAP_BINS] + [f"ssim/{b}" for b in M.GAP_BINS]
                    + [f"psnr/{s}" for s in M.SEGMENTS]
                    + ["psnr_max_decay", "probe_accuracy", "sec_per_frame", "flops_per_frame"])


@dataclass
class EvalConfig:
    checkpoint: str = field("", "checkpoint folder (holding checkpoint.pt), the file itself, or a run folder (latest)")
    cases: str = field("", "eval_cases.parquet (pipeline.eval_cases); default <train data-dir>/eval_cases.parquet")
    rollout_cases: str = field("", "rollout cases (64 frames) for PSNR by segment; default rollout_cases.parquet "
                                   "beside --cases, built into --out-dir from the cases' data folder if missing")
    out_dir: str = field("runs/eval", "output folder: results.json, results.md, videos, plots")
    probe_data: str = field("", "folder of real labelled frames for the scene probe; default the cases' folder")
    sampler: str = field("outpainting", "Meta-ARVDM schedule preset", choices=list(SAMPLERS))
    steps: int = field(20, "denoising steps (outpainting) or sub-steps per AR step (df_*); fifo ignores it")
    weights: str = field("ema", "which weights of the checkpoint", choices=["ema", "model"])
    num_cases: int = field(0, "retrieval cases to use (0 = all)")
    num_rollout_cases: int = field(8, "rollout cases to use (0 = skip PSNR by segment)")
    batch_size: int = field(8, "cases generated together")
    num_videos: int = field(4, "side-by-side videos to save and log")
    device: str = field("auto", "torch device: auto | cpu | cuda | cuda:N")
    seed: int = field(0, "seed of the sampler's noise")
    probe_max_steps: int = field(3000, "scene probe: optimiser steps at most (when it has to be trained)")
    probe_max_frames: int = field(20000, "scene probe: real frames used at most")
    probe_heads: list[str] = field([], "scene labels retrieval is judged on (room floor_texture wall_texture "
                                       "painting); default: every label the probe reads with >= 0.95 accuracy")
    cpu_threads: int = field(0, "torch CPU threads (0 = torch default; 1 is fastest on a busy machine)")
    tracking_uri: str = field("", "MLflow URI; default the checkpoint's, else sqlite:///<abs out-dir>/mlflow.db")
    experiment: str = field("memvid", "MLflow experiment (when a new run is made)")
    mlflow: bool = field(True, "log to MLflow")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r}: valid values are {list(SAMPLERS)}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        from pipeline.schema import SCENE_LABELS

        bad = [h for h in self.probe_heads if h not in SCENE_LABELS]
        if bad:
            raise ValueError(f"--probe-heads {bad}: valid labels are {list(SCENE_LABELS)}")
        for name in ("num_cases", "num_rollout_cases", "num_videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 0")


# ---------------------------------------------------------------------------------------------- inputs

def load_model(path: str, weights: str = "ema"):
    """(denoiser in eval mode, ModelConfig, checkpoint dict) from a checkpoint folder/file or a run folder."""
    from training import checkpoint as ckpt
    from training.models import ModelConfig, build_denoiser

    p = Path(path)
    if not path:
        raise ValueError("--checkpoint is required: a checkpoint folder, its checkpoint.pt, or a training run folder")
    if p.is_dir() and not (p / ckpt.CKPT_FILE).exists():
        latest = ckpt.latest_checkpoint(p) or ckpt.latest_checkpoint(p / "local")
        if latest is None:
            raise FileNotFoundError(f"--checkpoint {path}: no checkpoint.pt here nor checkpoint_* folders under it")
        p = latest
    state = ckpt.load_checkpoint(p)
    for key in ("model_config", weights):
        if key not in state:
            raise ValueError(f"--checkpoint {p}: field {key!r} missing (fields: {sorted(state)}); "
                             f"is it a memvid training checkpoint? (try --weights model/ema)")
    try:
        cfg = ModelConfig(**state["model_config"])
    except TypeError as e:
        raise ValueError(f"--checkpoint {p}: field 'model_config' does not fit ModelConfig ({e})") from e
    net = build_denoiser(cfg)
    try:
        net.load_state_dict(state[weights])
    except RuntimeError as e:
        raise ValueError(f"--checkpoint {p}: field {weights!r} does not match model_config {state['model_config']} "
                         f"({str(e).splitlines()[0]})") from e
    state["_path"] = str(p)
    return net.eval(), cfg, state


def check_cases(cases, cfg, path: Path, kind: str) -> None:
    """Cases must fit the model: channels and resolution (errors name the field at fault)."""
    if not cases:
        raise ValueError(f"{path}: no {kind} cases in the file")
    c, h, w = cases[0].target_x.shape[1:]
    if c != cfg.in_channels:
        raise ValueError(f"{path}: frames have {c} channels but the checkpoint's model_config.in_channels is "
                         f"{cfg.in_channels}: checkpoint and cases come from different data")
    if h != cfg.resolution or w != cfg.resolution:
        raise ValueError(f"{path}: frames are {h}x{w} but the checkpoint's model_config.resolution is "
                         f"{cfg.resolution}: checkpoint and cases come from different data")


def resolve_cases(cfg: EvalConfig, state: dict) -> Path:
    data_dir = (state.get("train_config") or {}).get("data_dir", "")
    path = Path(cfg.cases) if cfg.cases else Path(data_dir) / "eval_cases.parquet" if data_dir else None
    if path is None:
        raise ValueError("--cases is required (the checkpoint names no data folder)")
    if not path.exists():
        raise FileNotFoundError(
            f"--cases {path}: not found. Evaluation needs revisit episodes: collect them with "
            f"`python -m pipeline.collect --agent revisit`, encode, then `python -m pipeline.eval_cases "
            f"--data-dir {path.parent}` (which writes {path.parent / 'eval_cases.parquet'})")
    return path


def probe_settings(cfg: EvalConfig):
    """The scene probe settings of an evaluation (a sweep can train the probe once up front with
    `training.probe.load_or_train_probe(data_dir, probe_settings(cfg))`; trials then reuse it)."""
    from training.probe import ProbeSettings

    return ProbeSettings(max_steps=cfg.probe_max_steps, max_frames=cfg.probe_max_frames, seed=cfg.seed,
                         judge_heads=tuple(cfg.probe_heads), num_threads=cfg.cpu_threads)


# ---------------------------------------------------------------------------------------------- generation

def generate(net, model_cfg, cases, schedule, diffusion, cfg: EvalConfig, device) -> tuple[list[np.ndarray], float, int]:
    """Generate every case's frames; returns (per-case (n,C,H,W) arrays, sampling seconds, clip-calls: the
    number of (one clip) x (one denoiser call) evaluations, so FLOPs = clip_calls * FLOPs of one window)."""
    from training.sampler import sample

    L = model_cfg.memory_length if model_cfg.memory != "none" else 0
    out: list[np.ndarray | None] = [None] * len(cases)
    # Group cases with the same real-memory count and length, so no padding is passed as memory.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((min(int(c.memory_mask.sum()), L), len(c.actions)), []).append(i)
    seconds = 0.0
    counter = {"n": 0}

    def counted(x, *a, **k):
        counter["n"] += x.shape[0]  # (B,T,C,H,W): B clips move one step
        return net(x, *a, **k)

    for (m0, n), idx in sorted(groups.items()):
        for j in range(0, len(idx), cfg.batch_size):
            batch = [cases[i] for i in idx[j:j + cfg.batch_size]]
            acts = torch.as_tensor(np.stack([c.actions for c in batch]), dtype=torch.long, device=device)
            mem_x = mem_a = None
            if m0:
                mem_x = torch.as_tensor(np.stack([c.memory_x[-m0:] for c in batch]), device=device)
                mem_a = torch.as_tensor(np.stack([c.memory_actions[-m0:] for c in batch]), dtype=torch.long, device=device)
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + idx[j])
            t0 = time.perf_counter()
            x = sample(counted, diffusion, schedule, acts, mem_x, mem_a, L, gen,
                       frame_shape=tuple(batch[0].target_x.shape[1:]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            for i, xi in zip(idx[j:j + cfg.batch_size], x.float().cpu().numpy()):
                out[i] = xi
    return out, seconds, counter["n"]


# ---------------------------------------------------------------------------------------------- scoring

def score_retrieval(cases, generated, probe, probe_heads) -> list[dict]:
    """Per case: bin, retrieved (bool), ssim (mean over revisit frames), probe agreement on ground truth."""
    from pipeline.schema import SCENE_LABELS
    from training.probe import predict_labels

    heads = [SCENE_LABELS.index(h) for h in probe_heads]
    rows = []
    for case, gen in zip(cases, generated):
        rev = np.flatnonzero(case.revisit_gap >= 0)
        if rev.size == 0:
            continue
        gen_px, gt_px = to_pixels(gen[rev], case.encoder), to_pixels(case.target_x[rev], case.encoder)
        row = {"episode_id": case.episode_id, "gap_bin": case.gap_bin, "gap": int(case.gap),
               "num_revisit_frames": int(rev.size), "ssim": float(M.ssim_per_frame(gen_px, gt_px).mean())}
        if probe is not None:
            truth = case.target_scene[rev]
            row["retrieved"] = M.case_retrieved(predict_labels(probe, gen_px), truth, heads)
            row["probe_reads_truth"] = float(M.frames_match(predict_labels(probe, gt_px), truth, heads).mean())
        rows.append(row)
    return rows


def score_rollouts(cases, generated) -> dict[str, float]:
    segs = [M.psnr_by_segment(to_pixels(g, c.encoder), to_pixels(c.target_x, c.encoder)) for c, g in zip(cases, generated)]
    if not segs:
        return {s: math.nan for s in M.SEGMENTS}
    return {s: float(np.mean([d[s] for d in segs])) for s in M.SEGMENTS}


# ---------------------------------------------------------------------------------------------- entry point

def run_evaluation(cfg: EvalConfig) -> dict:
    """Generate, score and write results; returns the metrics dict (RESULT_KEYS + probe_valid, ...)."""
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _evaluate(cfg)
    finally:
        torch.set_num_threads(threads)


def _evaluate(cfg: EvalConfig) -> dict:
    from pipeline.eval_cases import ROLLOUT_CASES, build_rollout_cases, load_eval_cases
    from training.cost import forward_flops
    from training.diffusion import Diffusion
    from training.media import plot_bars, plot_lines, save_figure
    from training.probe import load_or_train_probe
    from training.schedules import build_schedule

    out_dir = Path(cfg.out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    # [1] model, cases, schedule
    net, model_cfg, state = load_model(cfg.checkpoint, cfg.weights)
    net.to(device)
    train_cfg = state.get("train_config") or {}
    cases_path = resolve_cases(cfg, state)
    cases = load_eval_cases(cases_path)
    cases = [c for c in cases if c.kind == "revisit"][:cfg.num_cases or None]
    if not cases:
        raise ValueError(f"--cases {cases_path}: no revisit cases; the data in {cases_path.parent} has no revisit "
                         f"episodes: collect with `--agent revisit` and rebuild with pipeline.eval_cases")
    check_cases(cases, model_cfg, cases_path, "retrieval")
    rollouts = []
    if cfg.num_rollout_cases:
        rpath = Path(cfg.rollout_cases) if cfg.rollout_cases else cases_path.parent / ROLLOUT_CASES
        if not rpath.exists():
            rpath = build_rollout_cases(cases_path.parent, out_dir / ROLLOUT_CASES, cfg.num_rollout_cases,
                                        horizon=M.SEGMENT_LENGTH * M.NUM_SEGMENTS, seed=cfg.seed)
        rollouts = [c for c in load_eval_cases(rpath) if len(c.actions) >= M.SEGMENT_LENGTH * M.NUM_SEGMENTS]
        rollouts = rollouts[:cfg.num_rollout_cases]
        if rollouts:
            check_cases(rollouts, model_cfg, rpath, "rollout")
    schedule = build_schedule(cfg.sampler, model_cfg.window, cfg.steps)
    diffusion = Diffusion(num_timesteps=train_cfg.get("num_timesteps", 1000), schedule=train_cfg.get("schedule", "sigmoid"))
    # [2] scene probe (trained once per data folder, then reused)
    probe_dir = Path(cfg.probe_data) if cfg.probe_data else cases_path.parent
    probe, report = None, None
    try:
        probe, report = load_or_train_probe(probe_dir, probe_settings(cfg), device=device)
    except ValueError as e:  # no scene labels in this dataset: retrieval is not judged, SSIM/PSNR still are
        print(f"[evaluate] scene probe unavailable: {e}", flush=True)
    # [3] generate and score
    print(f"[evaluate] {len(cases)} retrieval + {len(rollouts)} rollout cases, {schedule.describe()}, {device}", flush=True)
    gen_cases, sec_a, calls_a = generate(net, model_cfg, cases, schedule, diffusion, cfg, device)
    gen_rolls, sec_b, calls_b = generate(net, model_cfg, rollouts, schedule, diffusion, cfg, device) if rollouts else ([], 0.0, 0)
    rows = score_retrieval(cases, gen_cases, probe, report.judge_heads if report else [])
    bins = [r["gap_bin"] for r in rows]
    psnr = score_rollouts(rollouts, gen_rolls)
    num_frames = sum(len(c.actions) for c in cases) + sum(len(c.actions) for c in rollouts)
    fwd, _ = forward_flops(model_cfg, model_cfg.window)  # one denoiser call on one clip of w frames
    metrics = {**{f"retrieval/{b}": v for b, v in M.mean_by_bin([r.get("retrieved", math.nan) for r in rows], bins).items()},
               **{f"ssim/{b}": v for b, v in M.mean_by_bin([r["ssim"] for r in rows], bins).items()},
               **{f"psnr/{s}": v for s, v in psnr.items()},
               "psnr_max_decay": M.max_psnr_decay(psnr),
               "probe_accuracy": report.accuracy if report else math.nan,
               "sec_per_frame": (sec_a + sec_b) / max(1, num_frames),
               "flops_per_frame": fwd * (calls_a + calls_b) / max(1, num_frames)}
    probe_valid = bool(report and report.valid)  # False: the retrieval figures are reported but do not count
    metrics["probe_valid"] = probe_valid
    metrics["probe_reads_truth"] = float(np.mean([r["probe_reads_truth"] for r in rows])) if probe and rows else math.nan
    # [4] write and log
    results = {"metrics": metrics, "probe_valid": probe_valid, "checkpoint": state["_path"], "step": state.get("step", 0),
               "model_config": asdict(model_cfg), "config": asdict(cfg), "device": str(device),
               "cases_file": str(cases_path), "num_retrieval_cases": len(cases), "num_rollout_cases": len(rollouts),
               "cases_per_bin": {b: bins.count(b) for b in M.GAP_BINS}, "probe": asdict(report) if report else {},
               "cases": rows, "schedule": schedule.describe()}
    from pipeline.shards import write_json_atomic

    write_json_atomic(_json_safe(results), out_dir / "results.json")
    md = results_markdown(results)
    (out_dir / ".results.md.tmp").write_text(md)
    (out_dir / ".results.md.tmp").replace(out_dir / "results.md")
    videos = save_videos(cases, gen_cases, out_dir, "revisit", cfg.num_videos)
    videos += save_videos(rollouts, gen_rolls, out_dir, "rollout", min(cfg.num_videos, 2))
    figs = {"retrieval_by_gap.png": plot_bars({b: metrics[f"retrieval/{b}"] for b in M.GAP_BINS}, "Retrieval rate by gap",
                                              "retrieval rate", (0, 1)),
            "ssim_by_gap.png": plot_bars({b: metrics[f"ssim/{b}"] for b in M.GAP_BINS}, "SSIM of revisit frames", "SSIM"),
            "psnr_by_segment.png": plot_lines({model_cfg.memory: psnr}, "PSNR by 16-frame segment", "PSNR (dB)")}
    for name, fig in figs.items():
        save_figure(fig, out_dir / name)
    if cfg.mlflow:
        results["mlflow_run_id"] = log_to_mlflow(cfg, state, train_cfg, out_dir, metrics, videos, figs)
        write_json_atomic(_json_safe(results), out_dir / "results.json")
    print(md, flush=True)
    return metrics


def log_to_mlflow(cfg, state, train_cfg, out_dir: Path, metrics, videos, figs) -> str:
    from training.tracking import default_tracking_uri, make_client, start_or_resume_run

    uri = cfg.tracking_uri or train_cfg.get("tracking_uri") or ""
    if not uri and train_cfg.get("out_dir"):
        uri = default_tracking_uri(train_cfg["out_dir"])
    uri = uri or default_tracking_uri(out_dir)
    run_id = state.get("mlflow_run_id")
    previous = None
    if run_id:
        try:
            previous = make_client(uri).get_run(run_id).info.status
        except Exception:  # not in this store: a new run is made below
            previous = None
    run = start_or_resume_run(uri, train_cfg.get("experiment", cfg.experiment), f"eval-{Path(state['_path']).name}",
                              run_id=run_id, if_missing="create", tags={"evaluated_checkpoint": state["_path"]})
    step = int(state.get("step", 0))
    run.log_metrics({k: (float(v) if not isinstance(v, bool) else float(v)) for k, v in metrics.items()}, step=step)
    run.log_config({"eval": asdict(cfg)}, artifact_file="eval/eval_config.json")
    for name in ("results.json", "results.md"):
        run.log_file(out_dir / name, "eval")
    for frames, name in videos:
        run.log_gif_and_mp4(frames, f"eval/videos/{name}")
    for name, fig in figs.items():
        run.log_figure_png(fig, f"eval/plots/{name}")
    if previous != "RUNNING":  # a training run still in progress stays RUNNING
        run.end(previous if previous in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return run.run_id


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(EvalConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
