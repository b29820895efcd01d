"""training.evaluate end to end on a tiny untrained model, and its errors on bad input."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.eval_cases import build_eval_cases, build_rollout_cases
from pipeline.synthetic import write_synthetic_shards
from training import checkpoint as ckpt
from training.evaluate import RESULT_KEYS, EvalConfig, main, run_evaluation
from training.models import ModelConfig, build_denoiser


@pytest.fixture(autouse=True)
def one_thread():
    # On an oversubscribed 2-core box torch's 2 intra-op threads thrash (20x slower than 1 thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(folder, run_id=None, **model):
    cfg = ModelConfig(**{**dict(preset="tiny", resolution=8, memory="prepend", memory_length=8, window=4), **model})
    net = build_denoiser(cfg, seed=0)
    return ckpt.save_checkpoint({"model_config": dataclasses.asdict(cfg), "model": net.state_dict(),
                                 "ema": net.state_dict(), "step": 7, "mlflow_run_id": run_id,
                                 "train_config": {"num_timesteps": 100, "schedule": "sigmoid"}}, folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata") / "d"
    write_synthetic_shards(d, num_shards=1, episodes_per_shard=4, length=120, size=8, seed=1)
    build_eval_cases(d, cases_per_bin=1, max_memory=112, horizon=8, seed=0, window=4)
    build_rollout_cases(d, num_cases=2, max_memory=16, horizon=64, seed=0)
    return d


def _cfg(data, tmp_path, **kw):
    return EvalConfig(**{**dict(checkpoint=str(tmp_path / "ck"), cases=str(data / "eval_cases.parquet"),
                                out_dir=str(tmp_path / "out"), steps=2, num_rollout_cases=2, batch_size=4,
                                num_videos=1, probe_max_steps=10, probe_max_frames=400, device="cpu"), **kw})


@pytest.mark.timeout(300)
def test_end_to_end_tiny_model(data, tmp_path):
    _checkpoint(tmp_path / "ck")
    metrics = run_evaluation(_cfg(data, tmp_path, memory_lengths=[4, 8]))
    for key in RESULT_KEYS:
        assert key in metrics, key
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results["metrics"]) and results["probe_valid"] in (True, False)
    assert results["model_rows"] == ["model m=4", "model m=8"] and len(results["cases"]) == 6
    # calibration rows beside the model's, on the same cases; the ground truth retrieves every exact case
    assert {"ground truth", "copy m=4", "copy m=8", "repeat last frame", "other episode"} <= set(results["rows"])
    gt = results["rows"]["ground truth"]["retrieval"]["exact"]
    assert all(gt[b]["rate"] == 1.0 and gt[b]["n"] == 1 for b in ("0-16", "16-48", "48-112"))
    copy8 = results["rows"]["copy m=8"]["retrieval"]["exact"]
    assert copy8["48-112"]["rate"] == 0.0                                  # d > 8: outside a memory of 8
    assert (data / "eval_cases.oracles.json").exists()                     # cached beside the cases
    pair = results["paired"][0]
    assert (pair["a"], pair["b"]) == ("model m=8", "model m=4") and pair["by_bin"]["exact"]["0-16"]["n"] == 1
    assert all(-1 <= c["ssim"] <= 1 for c in results["cases"] if c["kind"] == "exact")
    assert metrics["flops_per_frame"] > 0 and metrics["sec_per_frame"] > 0
    assert metrics["psnr/0-16"] < 60  # an untrained model does not reproduce the ground truth
    md = (out / "results.md").read_text()
    assert "**model m=8**" in md and "| copy m=4 |" in md and "McNemar" in md and "Max. PSNR decay" in md
    assert (out / "psnr_by_segment.png").stat().st_size > 0 and list(out.glob("retrieval*-d*-*.gif"))
    # randomness per case: a batch size of 1 gives the same generated frames, hence the same per-case results
    again = run_evaluation(_cfg(data, tmp_path, memory_lengths=[8], batch_size=1, out_dir=str(tmp_path / "b1"),
                                mlflow=False, num_rollout_cases=0, calibration=False))
    rows_b1 = json.loads((tmp_path / "b1" / "results.json").read_text())["cases"]
    assert [r.get("ssim") for r in rows_b1] == [r.get("ssim") for r in results["cases"]]
    assert again["retrieval/0-16"] == metrics["retrieval/0-16"] or math.isnan(metrics["retrieval/0-16"])
    loss = results["denoising_error"]["exact"]                            # the loss-level view, paired
    assert sum(g["n"] for g in loss.values()) == 3 and all(g["long"] >= 0 for g in loss.values())
    # logged to MLflow: a new run (the checkpoint has no run id) under the out dir's store
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    run = client.get_run(results["mlflow_run_id"])
    from training.tracking import read_summary

    # measured once: a summary (summary.json + readable tags), not one-point metric charts; paths relative
    assert read_summary(client, run.info.run_id)["psnr/0-16"] == pytest.approx(metrics["psnr/0-16"])
    assert not run.data.metrics and run.data.tags["summary.retrieval/0-16"].endswith("cases)")
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert not value.startswith("/") and "/tmp/" not in value and str(Path.home()) not in value, (key, value)
    assert "/tmp/" not in (out / "results.md").read_text() and "/tmp/" not in (out / "results.json").read_text()
    gif = Image.open(next(out.glob("retrieval*-d*-*.gif")))
    assert gif.size[0] >= 2 * 128 and gif.size[1] >= 128              # 8x8 frames upscaled for viewing
    arts = {f.path for f in client.list_artifacts(run.info.run_id, "eval/plots")}
    assert "eval/plots/retrieval_by_bin_exact.png" in arts
    # a checkpoint that names its training run: evaluation logs into that run and leaves it FINISHED;
    # same seed, same figures (the probe is reused from <data>/scene_probe.pt)
    from training.tracking import start_or_resume_run

    uri = f"sqlite:///{out.resolve()}/mlflow.db"
    train_run = start_or_resume_run(uri, "memvid", "train-x")
    train_run.end()
    _checkpoint(tmp_path / "ck", run_id=train_run.run_id)
    again = run_evaluation(_cfg(data, tmp_path, out_dir=str(tmp_path / "out2"), tracking_uri=uri))
    assert again["psnr/0-16"] == pytest.approx(metrics["psnr/0-16"]) and (data / "scene_probe.pt").exists()
    run = client.get_run(train_run.run_id)
    assert run.info.status == "FINISHED"
    assert read_summary(client, train_run.run_id)["ssim/0-16"] == pytest.approx(again["ssim/0-16"])
    assert json.loads((tmp_path / "out2" / "results.json").read_text())["mlflow_run_id"] == train_run.run_id


def test_bad_inputs_name_the_field(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_evaluation(_cfg(data, tmp_path, checkpoint=str(tmp_path / "missing")))
    _checkpoint(tmp_path / "ck", resolution=16)
    with pytest.raises(ValueError, match="model_config.resolution"):
        run_evaluation(_cfg(data, tmp_path))
    _checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="pipeline.collect --agent revisit"):
        run_evaluation(_cfg(data, tmp_path, cases=str(tmp_path / "nope" / "eval_cases.parquet")))
    state = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=False)
    del state["ema"]
    torch.save(state, tmp_path / "ck" / "checkpoint.pt")
    with pytest.raises(ValueError, match="field 'ema' missing"):
        run_evaluation(_cfg(data, tmp_path))
    with pytest.raises(SystemExit):
        main(["--sampler", "bogus"])
    with pytest.raises(ValueError, match="valid labels"):
        EvalConfig(probe_heads=["rooms"])


def test_oracle_runs_like_a_model(data, tmp_path):
    from training.evaluate import main as evaluate_main

    evaluate_main(["--oracle", "copy", "--memory-lengths", "16", "--cases", str(data / "eval_cases.parquet"),
                   "--out-dir", str(tmp_path / "oracle"), "--probe-max-steps", "10", "--probe-max-frames", "400",
                   "--device", "cpu", "--num-videos", "1"])
    results = json.loads((tmp_path / "oracle" / "results.json").read_text())
    exact = results["rows"]["copy m=16"]["retrieval"]["exact"]
    assert results["model_rows"] == ["copy m=16"] and exact["0-16"]["rate"] == 1.0 and exact["48-112"]["rate"] == 0.0
    assert "oracle `copy`" in (tmp_path / "oracle" / "results.md").read_text()
    with pytest.raises(ValueError, match="--oracle copy needs --memory-lengths"):
        EvalConfig(oracle="copy")
