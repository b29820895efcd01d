"""Evaluate a trained denoiser on the saved evaluation cases (paper Sec. 5 Tables 1-2, App. H Tables 3-4).

    python -m training.evaluate --checkpoint runs/train/tiny-prepend-m16-none-w16-s0/local/checkpoint_00001000 \\
        --cases runs/demo/latents/eval_cases.parquet --out-dir runs/eval
    python -m training.evaluate --checkpoint ... --memory-lengths 4 16      # one model at two memory lengths, paired
    python -m training.evaluate --oracle copy --memory-lengths 16 --cases data/maze/eval_cases.parquet  # no model
    python -m training.evaluate --checkpoint ... --cases ... --sampler fifo --steps 16 --device cuda

Generation: Meta-ARVDM (`training.sampler.sample`) with a preset schedule (`--sampler`, `--steps`) from the case's
ground-truth memory (its last L real frames, padding dropped; L = each of --memory-lengths, default the model's)
and its actions, with one noise generator per case (seeded by --seed and the case's index), so results do not
depend on --batch-size and two memory lengths are compared on the same cases and the same noise.
Judges and figures (exact definitions: docs/evaluate.md, "Metric spec"; code: training/judges.py):
  retrieval by bin of d (frames from the first generated frame back to the last sighting; 0-16, 16-48, 48-112,
  Table 1) with 95% Wilson intervals, per case kind: revisit (room returns, read by the scene probe) and exact
  (pose returns, judged by nearest view); beside the model rows the calibration rows that need no model:
  ground truth, copy at each memory length (a perfect memory), repeat last frame, another episode (chance);
  paired comparisons (discordant counts, exact McNemar p) between memory lengths; a retrieval-vs-d curve;
  SSIM and PSNR on exact revisits (Table 2); PSNR per 16-frame segment of 64-frame rollouts and the max decay
  (Tables 3-4); sampling cost (seconds and FLOPs per generated frame).
Outputs in --out-dir: results.json, results.md, side-by-side GIF/MP4 (a retrieved and a missed case), PNG plots;
all logged to MLflow (the checkpoint's training run if its store has it, else a new run).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import field, parse_config, run_cli, to_json
from training import judges as J
from training import metrics as M
from training.eval_report import _json_safe, plot_results, results_markdown, save_videos, summary_texts, to_pixels
from training.tracking import portable

SAMPLERS = ("outpainting", "fifo", "df_pyramid", "df_chunked")
BINS = ("0-16", "16-48", "48-112")
RESULT_KEYS = tuple([f"retrieval/{b}" for b in BINS] + [f"ssim/{b}" for b in BINS]
                    + [f"psnr/{s}" for s in M.SEGMENTS]
                    + ["psnr_max_decay", "probe_accuracy", "sec_per_frame", "flops_per_frame"])


@dataclass
class EvalConfig:
    checkpoint: str = field("", "checkpoint folder (holding checkpoint.pt), the file itself, or a run folder (latest)")
    cases: str = field("", "eval_cases.parquet (pipeline.eval_cases); default <train data-dir>/eval_cases.parquet")
    rollout_cases: str = field("", "rollout cases (64 frames) for PSNR by segment; default rollout_cases.parquet "
                                   "beside --cases, built into --out-dir from the cases' data folder if missing")
    out_dir: str = field("runs/eval", "output folder: results.json, results.md, videos, plots")
    memory_lengths: list[int] = field([], "memory lengths L to run the model at, paired on the same cases and noise "
                                          "(e.g. 4 16); default: the model's memory length")
    oracle: str = field("", "run a generator that needs no model instead of --checkpoint",
                        choices=["", "ground_truth", "copy", "last_frame", "other_episode"])
    calibration: bool = field(True, "score the calibration rows (oracles) beside the model (cached beside --cases)")
    probe_data: str = field("", "folder of real labelled frames for the scene probe; default the cases' folder")
    sampler: str = field("outpainting", "Meta-ARVDM schedule preset", choices=list(SAMPLERS))
    steps: int = field(20, "denoising steps (outpainting) or sub-steps per AR step (df_*); fifo ignores it")
    weights: str = field("ema", "which weights of the checkpoint", choices=["ema", "model"])
    num_cases: int = field(0, "retrieval cases to use, in file order (0 = all)")
    num_rollout_cases: int = field(8, "rollout cases to use (0 = skip PSNR by segment)")
    batch_size: int = field(8, "cases generated together (results do not depend on it)")
    num_videos: int = field(4, "side-by-side videos to save and log (retrieved and missed cases alternately)")
    device: str = field("auto", "torch device: auto | cpu | cuda | cuda:N")
    seed: int = field(0, "seed of the sampler's noise (one generator per case)")
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
        if self.oracle and self.oracle not in J.ORACLES:
            raise ValueError(f"--oracle {self.oracle!r}: valid values are {list(J.ORACLES)}")
        if self.oracle == "copy" and not self.memory_lengths:
            raise ValueError("--oracle copy needs --memory-lengths (the memory the perfect copier has), e.g. 16")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        if any(L < 0 for L in self.memory_lengths):
            raise ValueError(f"--memory-lengths {self.memory_lengths}: expected values >= 0")
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

class _Counted:
    """The denoiser, counting clip-calls (FLOPs = calls x FLOPs of one window); everything else (e.g. the memory
    cache's `encode_memory`, which the sampler uses when the model offers it) passes through."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, *args, **kwargs):
        self.calls += x.shape[0]  # (B,T,C,H,W): B clips move one step
        return self.net(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


def generate(net, model_cfg, cases, schedule, diffusion, cfg: EvalConfig, device,
             memory_length: int, desc: str = "generate") -> tuple[list[np.ndarray], float, int]:
    """Generate every case's frames with the model's memory cut to `memory_length` frames; returns (per-case
    (n,C,H,W) arrays, sampling seconds, clip-calls: (one clip) x (one denoiser call) evaluations, so FLOPs =
    clip_calls * FLOPs of one window). Case i's noise comes from its own generator (seed, i) alone. Progress
    (cases done, rate, ETA) shows as `desc`."""
    from pipeline.console import progress
    from training.sampler import sample

    L = memory_length if model_cfg.memory != "none" else 0
    out: list[np.ndarray | None] = [None] * len(cases)
    # Group cases with the same real-memory count and length, so no padding is passed as memory.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((min(int(c.memory_mask.sum()), L), len(c.actions)), []).append(i)
    seconds = 0.0
    counted = _Counted(net)
    bar = progress(len(cases), desc, unit="case")

    for (m0, _), idx in sorted(groups.items()):
        for j in range(0, len(idx), cfg.batch_size):
            part = idx[j:j + cfg.batch_size]
            batch = [cases[i] for i in part]
            acts = torch.as_tensor(np.stack([c.actions for c in batch]), dtype=torch.long, device=device)
            mem_x = mem_a = None
            if m0:
                mem_x = torch.as_tensor(np.stack([c.memory_x[-m0:] for c in batch]), device=device)
                mem_a = torch.as_tensor(np.stack([c.memory_actions[-m0:] for c in batch]), dtype=torch.long,
                                        device=device)
            gens = [torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + i) for i in part]
            t0 = time.perf_counter()
            x = sample(counted, diffusion, schedule, acts, mem_x, mem_a, L, gens,
                       frame_shape=tuple(batch[0].target_x.shape[1:]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            for i, xi in zip(part, x.float().cpu().numpy()):
                out[i] = xi
            bar.update(len(part))
    bar.close()
    return out, seconds, counted.calls


@torch.no_grad()
def denoising_errors(net, model_cfg, cases, diffusion, cfg: EvalConfig, device, memory_length: int,
                     levels: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[float]:
    """Per case: the x0 error (MSE, model space) on its judged frames when the model denoises the true window,
    every frame noised to each of `levels` (fractions of K) with the case's own noise, given its last
    `memory_length` real memory frames; mean over levels. The loss-level view of memory: paired across memory
    lengths (same noise), a smaller error where only the longer memory holds the source is the memory at work."""
    L = memory_length if model_cfg.memory != "none" else 0
    w = model_cfg.window
    out = []
    for i, case in enumerate(cases):
        m0 = min(int(case.memory_mask.sum()), L)
        x0 = torch.as_tensor(case.target_x[None, :w], device=device)
        acts = torch.as_tensor(case.actions[None, :w], dtype=torch.long, device=device)
        mem = {}
        if m0:
            mem = dict(mem_x=torch.as_tensor(case.memory_x[None, -m0:], device=device),
                       mem_actions=torch.as_tensor(case.memory_actions[None, -m0:], dtype=torch.long, device=device),
                       mem_mask=torch.ones(1, m0, dtype=torch.bool, device=device))
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + i)
        noise = diffusion.randn(x0.shape, gen, device)
        judged = torch.as_tensor(np.flatnonzero(case.judged[:w]), device=device)
        errs = []
        for f in levels:
            k = torch.full(x0.shape[:2], max(1, int(round(f * diffusion.num_timesteps))), device=device)
            v = net(diffusion.q_sample(x0, k, noise), diffusion.model_levels(k), acts, **mem)
            x0_hat, _ = diffusion.predict_x0_eps(diffusion.q_sample(x0, k, noise), k, v)
            errs.append(float(((x0_hat - x0)[:, judged] ** 2).mean()))
        out.append(float(np.mean(errs)))
    return out


def loss_by_coverage(errors: dict[str, list[float]], cases, lengths: list[int]) -> dict:
    """{kind: {group: {n, errors by row, paired mean difference longest - other with 95% interval}}}."""
    names = list(errors)
    out: dict = {}
    for kind in ("exact", "revisit"):
        idx_kind = [i for i, c in enumerate(cases) if c.kind == kind]
        if not idx_kind or len(names) < 2:
            continue
        for name, L in zip(names[:-1], lengths[:-1]):
            for group, (lo, hi) in J.coverage_groups(lengths[-1], L).items():
                idx = [i for i in idx_kind if lo < cases[i].d <= hi]
                if not idx:
                    continue
                diff = [errors[names[-1]][i] - errors[name][i] for i in idx]
                out.setdefault(kind, {})[f"{names[-1]} vs {name}: {group}"] = {
                    "n": len(idx), "long": float(np.mean([errors[names[-1]][i] for i in idx])),
                    "short": float(np.mean([errors[name][i] for i in idx])), "difference": M.mean_summary(diff)}
    return out


def score_rollouts(cases, generated) -> dict[str, float]:
    segs = [M.psnr_by_segment(to_pixels(g, c.encoder), to_pixels(c.target_x, c.encoder))
            for c, g in zip(cases, generated)]
    if not segs:
        return {s: math.nan for s in M.SEGMENTS}
    return {s: float(np.mean([d[s] for d in segs])) for s in M.SEGMENTS}


# ---------------------------------------------------------------------------------------------- calibration

def calibration_rows(cases_path: Path, cases, lengths: list[int], probe, report, num_cases: int) -> dict[str, list]:
    """Per-case rows of the oracles (ground truth, copy at each length, last frame, other episode), computed once
    per (case file, probe, judged labels) and cached in <cases>.oracles.json beside the case file."""
    from pipeline.eval_cases import case_file_fingerprint
    from pipeline.shards import write_json_atomic

    heads = report.judge_heads if report else []
    key = json.dumps({"cases": case_file_fingerprint(cases_path), "num_cases": num_cases, "heads": heads,
                      "probe": report.data_fingerprint if report else "", "probe_steps": report.steps if report else 0})
    cache_path = cases_path.with_name(cases_path.stem + ".oracles.json")
    cache = {}
    if cache_path.exists():
        cache = json.loads(cache_path.read_text())
        cache = cache if cache.get("key") == key else {}
    rows = cache.get("rows", {})
    wanted = [(J.ORACLE_ROWS[name].format(L=L), name, L) for name in J.ORACLES
              for L in (lengths if name == "copy" else [0]) if L > 0 or name != "copy"]
    missing = [w for w in wanted if w[0] not in rows]
    for name, oracle, L in missing:
        rows[name] = J.judge_cases(cases, J.oracle_frames(cases, oracle, L), probe, heads)
    if missing:
        try:
            write_json_atomic(_json_safe({"key": key, "rows": rows}), cache_path)
        except OSError as e:  # a read-only data folder: computed again next time
            print(f"[evaluate] calibration cache not written ({cache_path}: {e.strerror})", flush=True)
    return {name: rows[name] for name, _, _ in wanted}


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


def _headline(rows: list[dict], valid: dict, probe_valid: bool) -> dict:
    """retrieval/<bin> pooled over the case kinds whose judge is valid in that bin, with its interval."""
    out = {}
    for b in BINS:
        kinds = [k for k in ("revisit", "exact") if valid.get(k, {}).get(b) and (k != "revisit" or probe_valid)]
        s = J.pooled_rate(rows, b, kinds)
        out.update({f"retrieval/{b}": s["rate"], f"retrieval_lo/{b}": s["lo"], f"retrieval_hi/{b}": s["hi"],
                    f"retrieval_n/{b}": s["n"]})
    return out


def _evaluate(cfg: EvalConfig) -> dict:
    from pipeline.eval_cases import load_eval_cases
    from training.probe import load_or_train_probe

    out_dir = Path(cfg.out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    # [1] model (or oracle), cases
    if cfg.oracle:
        net, model_cfg, state, train_cfg = None, None, {"_path": f"oracle:{cfg.oracle}", "step": 0}, {}
        if not cfg.cases:
            raise ValueError("--oracle needs --cases (there is no checkpoint to name a data folder)")
        cases_path = resolve_cases(cfg, state)
    else:
        net, model_cfg, state = load_model(cfg.checkpoint, cfg.weights)
        net.to(device)
        train_cfg = state.get("train_config") or {}
        schedule, diffusion = _sampler(cfg, model_cfg, train_cfg)
        cases_path = resolve_cases(cfg, state)
    cases = [c for c in load_eval_cases(cases_path) if c.kind != "rollout"][:cfg.num_cases or None]
    if not cases:
        raise ValueError(f"--cases {cases_path}: no retrieval cases; the data in {cases_path.parent} has no revisit "
                         f"episodes: collect with `--agent revisit` (or lookback) and rebuild with pipeline.eval_cases")
    own = model_cfg.memory_length if model_cfg and model_cfg.memory != "none" else 0
    lengths = sorted(set(cfg.memory_lengths)) if cfg.memory_lengths else [own]
    if model_cfg:
        check_cases(cases, model_cfg, cases_path, "retrieval")
    rollouts = _rollouts(cfg, cases_path, out_dir, model_cfg) if net is not None else []
    # [2] scene probe (trained once per data folder, then reused)
    probe_dir = Path(cfg.probe_data) if cfg.probe_data else cases_path.parent
    probe, report = None, None
    try:  # only room-revisit cases are judged by the probe; exact revisits are judged on pixels
        if any(c.kind == "revisit" for c in cases):
            probe, report = load_or_train_probe(probe_dir, probe_settings(cfg), device=device)
    except ValueError as e:  # no scene labels in this dataset: revisit cases are not judged, exact cases still are
        print(f"[evaluate] scene probe unavailable: {e}", flush=True)
    heads = report.judge_heads if report else []
    # [3] generate and judge: one row set per memory length (model) or the oracle
    gens, rows, errors, cost = {}, {}, {}, {"seconds": 0.0, "calls": 0, "frames": 0}
    for L in lengths:
        name = J.ORACLE_ROWS[cfg.oracle].format(L=L) if cfg.oracle else f"model m={L}"
        if cfg.oracle:
            gens[name] = J.oracle_frames(cases, cfg.oracle, L)
        else:
            print(f"[evaluate] {len(cases)} retrieval cases at memory {L}, {schedule.describe()}, {device}", flush=True)
            gens[name], sec, calls = generate(net, model_cfg, cases, schedule, diffusion, cfg, device, L,
                                              desc=f"evaluate m={L}")
            cost = {"seconds": sec, "calls": calls, "frames": sum(len(c.actions) for c in cases)}
        rows[name] = J.judge_cases(cases, gens[name], probe, heads)
        if net is not None:
            errors[name] = denoising_errors(net, model_cfg, cases, diffusion, cfg, device, L)
        if cfg.oracle != "copy" and cfg.oracle:
            break                                       # other oracles do not depend on L
    calib = calibration_rows(cases_path, cases, lengths, probe, report, len(cases)) if cfg.calibration else {}
    psnr, sec_b, calls_b, gen_rolls = {s: math.nan for s in M.SEGMENTS}, 0.0, 0, []
    if rollouts:
        gen_rolls, sec_b, calls_b = generate(net, model_cfg, rollouts, schedule, diffusion, cfg, device, lengths[-1],
                                             desc="rollouts")
        psnr = score_rollouts(rollouts, gen_rolls)
    # [4] summaries, paired comparisons, headline metrics
    main_name = list(rows)[-1]                          # the longest memory
    summaries = {name: J.summarise(r) for name, r in {**rows, **calib}.items()}
    valid = J.judge_valid(summaries["ground truth"]) if calib else {}
    pairs = [{"a": main_name, "b": name, "by_bin": J.paired(rows[main_name], rows[name]),
              "by_coverage": J.paired(rows[main_name], rows[name], J.coverage_groups(lengths[-1], L))}
             for name, L in zip(list(rows)[:-1], lengths)]
    groups = J.coverage_groups(lengths[-1], lengths[0]) if len(lengths) > 1 else {}
    coverage = {name: J.rates_by_group(r, groups) for name, r in {**rows, **calib}.items()} if groups else {}
    probe_valid = bool(report and report.valid)
    judged_ok = valid or {k: {b: True for b in BINS} for k in ("revisit", "exact")}
    calibration = {}
    for name, r in calib.items():
        headline = _headline(r, judged_ok, probe_valid)
        calibration[name] = {b: headline[f"retrieval/{b}"] for b in BINS}
    metrics = {**_headline(rows[main_name], judged_ok, probe_valid),
               **{f"ssim/{b}": summaries[main_name]["ssim"][b]["mean"] for b in BINS},
               **{f"psnr/{s}": v for s, v in psnr.items()}, "psnr_max_decay": M.max_psnr_decay(psnr),
               "probe_accuracy": report.accuracy if report else math.nan, "probe_valid": probe_valid}
    if net is not None:
        from training.cost import forward_flops

        num_frames = cost["frames"] + sum(len(c.actions) for c in rollouts)
        fwd, _ = forward_flops(model_cfg, model_cfg.window)  # one denoiser call on one clip of w frames
        metrics["sec_per_frame"] = (cost["seconds"] + sec_b) / max(1, num_frames)
        metrics["flops_per_frame"] = fwd * (cost["calls"] + calls_b) / max(1, num_frames)
    # [5] write and log
    results = {"metrics": metrics, "probe_valid": probe_valid, "checkpoint": _relative(state["_path"], out_dir),
               "step": state.get("step", 0), "model_config": asdict(model_cfg) if model_cfg else {},
               "config": portable(asdict(cfg), out_dir), "device": str(device),
               "cases_file": _relative(str(cases_path), out_dir),
               "num_retrieval_cases": len(cases), "num_rollout_cases": len(rollouts), "memory_lengths": lengths,
               "probe": asdict(report) if report else {}, "rows": {n: summaries[n] for n in summaries},
               "model_rows": list(rows), "judge_valid": valid, "paired": pairs, "cases": rows[main_name],
               "coverage": coverage,
               "calibration": calibration, "denoising_error": loss_by_coverage(errors, cases, lengths),
               "schedule": schedule.describe() if net is not None else cfg.oracle}
    from pipeline.shards import write_json_atomic

    write_json_atomic(_json_safe(results), out_dir / "results.json")
    md = results_markdown(results)
    (out_dir / ".results.md.tmp").write_text(md)
    (out_dir / ".results.md.tmp").replace(out_dir / "results.md")
    videos = save_videos(cases, gens[main_name], rows[main_name], out_dir, "retrieval", cfg.num_videos,
                         generator=main_name)
    videos += save_videos(rollouts, gen_rolls, [], out_dir, "rollout", min(cfg.num_videos, 2), generator=main_name)
    figs = plot_results(results, psnr)
    from training.media import save_figure

    for name, fig in figs.items():
        save_figure(fig, out_dir / name)
    if cfg.mlflow:
        results["mlflow_run_id"] = log_to_mlflow(cfg, state, train_cfg, out_dir, metrics, videos, figs)
        write_json_atomic(_json_safe(results), out_dir / "results.json")
    print(md, flush=True)
    return metrics


def _relative(path: str, out_dir: Path) -> str:
    """A path as logged: relative to the output folder where it lies under it or its parent, else its name."""
    p = Path(path)
    if not p.is_absolute():
        return path
    for base in (out_dir, out_dir.parent):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return p.name if not path.startswith("oracle:") else path


def _sampler(cfg: EvalConfig, model_cfg, train_cfg: dict):
    from training.diffusion import Diffusion
    from training.schedules import build_schedule

    return (build_schedule(cfg.sampler, model_cfg.window, cfg.steps),
            Diffusion(num_timesteps=train_cfg.get("num_timesteps", 1000),
                      schedule=train_cfg.get("schedule", "sigmoid")))


def _rollouts(cfg: EvalConfig, cases_path: Path, out_dir: Path, model_cfg) -> list:
    from pipeline.eval_cases import ROLLOUT_CASES, build_rollout_cases, load_eval_cases

    if not cfg.num_rollout_cases:
        return []
    rpath = Path(cfg.rollout_cases) if cfg.rollout_cases else cases_path.parent / ROLLOUT_CASES
    if not rpath.exists():
        rpath = build_rollout_cases(cases_path.parent, out_dir / ROLLOUT_CASES, cfg.num_rollout_cases,
                                    horizon=M.SEGMENT_LENGTH * M.NUM_SEGMENTS, seed=cfg.seed)
    rollouts = [c for c in load_eval_cases(rpath) if len(c.actions) >= M.SEGMENT_LENGTH * M.NUM_SEGMENTS]
    rollouts = rollouts[:cfg.num_rollout_cases]
    if rollouts:
        check_cases(rollouts, model_cfg, rpath, "rollout")
    return rollouts


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
    try:
        # measured once per evaluation: a summary (tags + summary.json), not one-point metric charts
        run.log_summary({**metrics, "evaluated_step": step}, {**summary_texts(metrics), "evaluated_step": str(step)})
        run.log_config({"eval": asdict(cfg)}, artifact_file="eval/eval_config.json")
        for name in ("results.json", "results.md"):
            run.log_file(out_dir / name, "eval")
        for frames, name in videos:
            run.log_gif_and_mp4(frames, f"eval/videos/{name}")
        for name, fig in figs.items():
            run.log_figure_png(fig, f"eval/plots/{name}")
    except BaseException as e:  # the run ends FAILED (KILLED on Ctrl-C/SIGTERM), never left RUNNING by us
        if previous != "RUNNING":
            run.end_with(e, "evaluate: ", only_if_running=False)
        raise
    if previous != "RUNNING":  # a training run still in progress stays RUNNING
        run.end(previous if previous in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return run.run_id


def _check_cli(cfg: EvalConfig) -> None:
    """What only the command line requires (a sweep builds EvalConfigs without a checkpoint, for the probe)."""
    if not cfg.checkpoint and not cfg.oracle:
        raise ValueError("--checkpoint is required: a checkpoint folder, its checkpoint.pt, or a training run "
                         "folder (or --oracle NAME with --cases to score an oracle)")


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(EvalConfig, argv, description=__doc__, check=_check_cli)
    print(to_json(cfg), flush=True)
    if dry_run:  # what the real run would fail on at once: the checkpoint and the cases
        state = {} if cfg.oracle else load_model(cfg.checkpoint, cfg.weights)[2]
        resolve_cases(cfg, state)
        return
    from training.tracking import sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM while logging ends the MLflow run KILLED, as Ctrl-C does
    run_evaluation(cfg)


if __name__ == "__main__":
    run_cli(main)
