"""training.evaluate end to end on a tiny untrained model, and its errors on bad input."""
import dataclasses
import json

import pytest
import torch

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
    build_eval_cases(d, num_cases=6, max_memory=16, horizon=8, seed=0, window=4)
    build_rollout_cases(d, num_cases=2, max_memory=16, horizon=64, seed=0)
    return d


def _cfg(data, tmp_path, **kw):
    return EvalConfig(**{**dict(checkpoint=str(tmp_path / "ck"), cases=str(data / "eval_cases.parquet"),
                                out_dir=str(tmp_path / "out"), steps=2, num_rollout_cases=2, batch_size=4,
                                num_videos=1, probe_max_steps=10, probe_max_frames=400, device="cpu"), **kw})


@pytest.mark.timeout(120)
def test_end_to_end_tiny_model(data, tmp_path):
    _checkpoint(tmp_path / "ck")
    metrics = run_evaluation(_cfg(data, tmp_path))
    for key in RESULT_KEYS:
        assert key in metrics, key
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results["metrics"]) and results["probe_valid"] in (True, False)
    assert sum(results["cases_per_bin"].values()) == 6 == len(results["cases"])
    assert all(0 <= c["ssim"] <= 1 or -1 <= c["ssim"] <= 1 for c in results["cases"])
    assert metrics["flops_per_frame"] > 0 and metrics["sec_per_frame"] > 0
    assert metrics["psnr/0-16"] < 60  # an untrained model does not reproduce the ground truth
    md = (out / "results.md").read_text()
    assert "| prepend | 8 | none | N/A |" in md and "Max. PSNR decay" in md
    assert (out / "psnr_by_segment.png").stat().st_size > 0 and list(out.glob("revisit00-*.gif"))
    # logged to MLflow: a new run (the checkpoint has no run id) under the out dir's store
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    run = client.get_run(results["mlflow_run_id"])
    assert run.data.metrics["psnr/0-16"] == pytest.approx(metrics["psnr/0-16"])
    arts = {f.path for f in client.list_artifacts(run.info.run_id, "eval/plots")}
    assert "eval/plots/retrieval_by_gap.png" in arts
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
    assert run.info.status == "FINISHED" and run.data.metrics["ssim/0-16"] == pytest.approx(again["ssim/0-16"])
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
