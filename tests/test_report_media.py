"""Plots and videos that read without the docs: >= 1000 px wide, counts and intervals, the not-valid stamp,
captioned upscaled frames; a real short training run logs no absolute path."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import metrics as M
from training.eval_report import BINS, plot_results
from training.media import CONTEXT_BORDER_RGB, GENERATED_BORDER_RGB, save_figure, side_by_side, write_gif


def _results(probe_valid: bool, probe_accuracy: float) -> dict:
    """A results dict as training.evaluate builds it: two model rows and two calibration rows, 5 cases per bin."""
    outcomes = {"model m=4": [1, 0, 0, 0, 0], "model m=8": [1, 1, 0, 0, 0], "ground truth": [1] * 5,
                "copy m=8": [1, 1, 1, 0, 0]}
    rows = {}
    for name, o in outcomes.items():
        rates = {b: M.rate_summary([bool(x) for x in o]) for b in BINS}
        rows[name] = {"retrieval": {"revisit": rates, "exact": rates},
                      "curve": {k: {"0-1": rates["0-16"], "24-32": rates["16-48"]} for k in ("revisit", "exact")},
                      "ssim": {b: M.mean_summary([0.2, 0.3, 0.25]) for b in BINS},
                      "psnr": {b: M.mean_summary([20.0, 21.0]) for b in BINS}}
    valid = {k: {b: True for b in BINS} for k in ("revisit", "exact")}
    valid["exact"]["48-112"] = False
    return {"rows": rows, "model_rows": ["model m=4", "model m=8"], "probe_valid": probe_valid,
            "judge_valid": valid, "memory_lengths": [4, 8], "num_rollout_cases": 2,
            "metrics": {"probe_accuracy": probe_accuracy, "psnr_max_decay": 1.5}}


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_plots_are_wide_with_counts_and_the_invalid_stamp(tmp_path):
    psnr = {"0-16": 22.0, "16-32": 21.0, "32-48": 20.5, "48-64": 20.0}
    figs = plot_results(_results(False, 0.6), psnr)
    assert {"retrieval_by_bin_revisit.png", "retrieval_vs_d_exact.png", "ssim_by_bin.png",
            "psnr_by_segment.png"} <= set(figs)
    for name, fig in figs.items():
        assert Image.open(save_figure(fig, tmp_path / name)).size[0] >= 1000, name
    stamp = "not valid: probe accuracy 0.600 < 0.95"
    assert stamp in _texts(figs["retrieval_by_bin_revisit.png"]) and stamp in _texts(figs["retrieval_vs_d_revisit.png"])
    assert not any(stamp in t for t in _texts(figs["retrieval_by_bin_exact.png"]))   # exact cases need no probe
    bars = figs["retrieval_by_bin_exact.png"].axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == [f"d in {b} frames\n(5 cases)" for b in BINS]
    assert {"1/5", "2/5", "5/5", "3/5"} <= set(_texts(figs["retrieval_by_bin_exact.png"]))  # successes / cases
    assert any("ground truth judged < 0.9" in t for t in _texts(figs["retrieval_by_bin_exact.png"]))
    labels = bars.get_legend().get_texts()
    assert [t.get_text() for t in labels][:3] == ["model m=4 (generated)", "model m=8 (generated)",
                                                  "ground truth (no model)"]
    assert bars.get_ylabel().startswith("retrieval rate") and "dB" in figs["psnr_by_segment.png"].axes[0].get_ylabel()
    valid = plot_results(_results(True, 0.97), psnr)
    assert not any("not valid: probe" in t for t in _texts(valid["retrieval_by_bin_revisit.png"]))


def test_sweep_report_plots_are_wide(tmp_path):
    from tuning.report import write_report

    trials = []
    for i, (memory_length, acc) in enumerate(((4, 0.97), (8, 0.6))):
        m = {"psnr_max_decay": 1.0 + i, "flops_per_frame": 1e8 * (i + 1), "probe_accuracy": acc}
        for b in BINS:
            m.update({f"retrieval/{b}": 0.4 + 0.1 * i, f"retrieval_lo/{b}": 0.2, f"retrieval_hi/{b}": 0.7,
                      f"retrieval_n/{b}": 10.0})
        trials.append({"name": f"prepend-m{memory_length}", "status": "ok", "metrics": m,
                       "config": {"memory": "prepend", "memory_length": memory_length, "compression": "none",
                                  "budget": memory_length},
                       "calibration": {"ground truth": {b: 1.0 for b in BINS}, "copy m=8": {b: 0.9 for b in BINS}}})
    paths = write_report(trials, tmp_path)
    for name in ("retrieval_vs_budget", "retrieval_vs_decay", "retrieval_vs_cost"):
        assert Image.open(paths[name]).size[0] >= 1000, name


def test_video_frames_are_upscaled_and_captioned(tmp_path):
    rng = np.random.default_rng(0)
    gt, gen = (rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    notes = ["memory s-2 (given)", "memory s-1 (given)", "generated 1/3, d = 4", "generated 2/3, d = 5 (judged)",
             "generated 3/3, d = 6"]
    frames = side_by_side(gt, gen, num_context=2, notes=notes)
    gif = Image.open(write_gif(frames, tmp_path / "case.gif"))
    assert gif.n_frames == 5 and gif.size[0] >= 2 * 128 and gif.size[1] >= 128
    # the title bar over the right panel: blue while memory is shown, red once generation starts
    right_title = frames[:, 4, -4]
    assert (right_title[:2] == CONTEXT_BORDER_RGB).all() and (right_title[2:] == GENERATED_BORDER_RGB).all()
    # nearest neighbour: each source pixel is a uniform 16x16 block of the ground-truth panel
    block = frames[0, 18:18 + 16, 0:16]
    assert (block == gt[0, 0, 0]).all()
    # captions differ frame to frame (the note line), not only the pixels
    note_rows = frames[:, 18 + 128:18 + 128 + 18]
    assert not np.array_equal(note_rows[2], note_rows[3])
    with pytest.raises(ValueError, match="notes"):
        side_by_side(gt, gen, num_context=2, notes=notes[:2])


def test_a_training_run_logs_no_absolute_path(tmp_path):
    """A real short run (local backend, 2 steps): params and tags hold paths relative to the store's folder."""
    from mlflow import MlflowClient

    from pipeline.encode import EncodeConfig, run_encode
    from pipeline.synthetic import write_synthetic_shards
    from training.train import TrainConfig, run_training

    write_synthetic_shards(tmp_path / "episodes", num_shards=1, episodes_per_shard=1, length=24, size=8, seed=0)
    run_encode(EncodeConfig(in_dir=str(tmp_path / "episodes"), out_dir=str(tmp_path / "latents"), encoder="identity",
                            backend="local"))
    out = run_training(TrainConfig(data_dir=str(tmp_path / "latents"), out_dir=str(tmp_path / "out"), backend="local",
                                   steps=2, log_every=1, checkpoint_every=2, window=4, memory_length=4, budget=4,
                                   batch_size=2))
    run = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}").get_run(out["mlflow_run_id"])
    assert run.data.params["data_dir"] == "../latents" and run.data.params["out_dir"] == "."
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert not value.startswith("/") and "/tmp/" not in value and str(Path.home()) not in value, (key, value)


def test_sweep_report_reads_trial_summaries_from_mlflow(tmp_path):
    from training import tracking
    from tuning.report import load_trials

    uri = tracking.default_tracking_uri(tmp_path)
    parent = tracking.start_or_resume_run(uri, "memvid-sweeps", "sweep")
    child = tracking.start_or_resume_run(uri, "memvid-sweeps", "prepend-m4", parent_run_id=parent.run_id)
    child.log_config({"memory": "prepend", "memory_length": 4, "compression": "none", "budget": 4})
    child.log_metrics({"loss": 0.5}, step=3)
    child.log_summary({"retrieval/0-16": 0.25, "retrieval_n/0-16": 8})
    child.end()
    (trial,) = load_trials(f"mlflow:{parent.run_id}", uri)
    assert trial["config"] == {"memory": "prepend", "memory_length": 4, "compression": "none", "budget": 4}
    assert trial["metrics"] == {"loss": 0.5, "retrieval/0-16": 0.25, "retrieval_n/0-16": 8.0}
    assert trial["status"] == "ok"
