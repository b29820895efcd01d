"""Gaussian videos with the exact score (training.gaussian_video) and the paper's Sec. 4 checks (training.theory)."""
import pytest
import torch

from training.diffusion import Diffusion
from training.gaussian_video import (
    ExactDenoiser,
    ar1,
    conditional_kl,
    frame_clock,
    lag_correlation,
    marginal_kl,
    memory_bottleneck,
    mixture,
    observation_cov,
    sample_correlation,
    seasonal,
)
from training.sampler import sample
from training.schedules import outpainting
from training.theory import TheoryConfig, accumulation_grid, main, schedule_grid

M0, W = 40, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _law(g: int):
    return mixture(0.5, ar1(0.6), seasonal(g, 0.95))


def _one_step(law, m: int, n: int, steps: int, seed: int):
    """(context (n,M0,1,1,1), one outpainting AR step of W frames generated with the exact score and memory m)."""
    context = law.sample(n, M0, torch.Generator().manual_seed(seed))
    memory_actions, actions = frame_clock(n, M0, W)
    diffusion = Diffusion(1000)
    video = sample(ExactDenoiser(law, diffusion), diffusion, outpainting(W, steps), actions, context, memory_actions,
                   m, torch.Generator().manual_seed(seed + 1))
    return context, video


# ----------------------------------------------------------------------------------------------- exact denoiser
def test_exact_denoiser_is_the_least_squares_predictor():
    """Two code paths agree: the denoiser's linear map equals the least-squares regression of the true v target on
    (references, noisy window), fitted on simulated draws with per-frame levels and references that are neither
    contiguous nor next to the window."""
    law, diffusion, n = _law(3), Diffusion(100), 60000
    ref_times, win_times, k = [0, 2, 5], [7, 8, 9], torch.tensor([10, 55, 100])
    x = law.sample(n, 10, torch.Generator().manual_seed(0))[:, :, 0, 0, 0].double()  # (n,10)
    noise = torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    abar = diffusion.alpha_bar[k]
    y = abar.sqrt() * x[:, win_times] + (1 - abar).sqrt() * noise
    v_true = abar.sqrt() * noise - (1 - abar).sqrt() * x[:, win_times]
    z = torch.cat([x[:, ref_times], y], 1)
    fitted = torch.linalg.lstsq(z, v_true).solution.T  # (3, 6)
    v_map = ExactDenoiser(law, diffusion).linear_map((-7, -5, -2), tuple(k.tolist()))
    assert (fitted - v_map).abs().max() < 0.03, (fitted - v_map).abs().max()
    out = ExactDenoiser(law, diffusion)(y[:, :, None, None, None].float(),
                                        (k / 100.0).float().expand(n, 3), torch.full((n, 3), 7),
                                        x[:, ref_times, None, None, None].float(), torch.tensor(ref_times).expand(n, 3),
                                        torch.ones(n, 3, dtype=torch.bool))
    assert torch.allclose(out[:, :, 0, 0, 0].double(), z @ v_map.T, atol=1e-4)


def test_mixed_rows_match_row_by_row_calls_and_vector_frames():
    """Rows with different levels and reference masks (the grouped path) give what each row gives alone; frames
    may be vectors (C,H,W) and every scalar channel gets the same map."""
    law, diffusion = _law(4), Diffusion(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 2, 2, generator=g)
    levels = torch.tensor([[0.2, 0.6], [0.4, 1.0], [0.2, 0.6]])
    mem = torch.randn(3, 3, 2, 2, 2, generator=g)
    mask = torch.tensor([[False, True, True], [True, True, True], [False, False, False]])
    mem_a, acts = torch.tensor([[0, 4, 5]] * 3), torch.tensor([[6, 7]] * 3)
    den = ExactDenoiser(law, diffusion)
    together = den(x, levels, acts, mem, mem_a, mask)
    for b in range(3):
        alone = den(x[b:b + 1], levels[b:b + 1], acts[b:b + 1], mem[b:b + 1], mem_a[b:b + 1], mask[b:b + 1])
        assert torch.allclose(together[b:b + 1], alone, atol=1e-6), b
    assert (together[0] - together[2]).abs().max() > 1e-3  # the references matter


def test_references_without_frame_times_are_rejected():
    den = ExactDenoiser(ar1(0.5), Diffusion(20))
    x, ones = torch.zeros(1, 2, 1, 1, 1), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="frame_clock"):
        den(x, torch.full((1, 2), 0.5), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 1, 1, 1),
            torch.zeros(1, 2, dtype=torch.long), ones)


def test_noise_levels_of_one_frame_share_a_forward_trajectory():
    """observation_cov against a simulated forward chain x0 -> x_a1 -> x_a2 (Ho et al. 2020, Eqn. 2)."""
    law, n = ar1(0.7), 200000
    g = torch.Generator().manual_seed(0)
    x = law.sample(n, 2, g)[:, :, 0, 0, 0].double()
    a1, a2 = 0.8, 0.3
    y1 = a1 ** 0.5 * x[:, 1] + (1 - a1) ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    y2 = (a2 / a1) ** 0.5 * y1 + (1 - a2 / a1) ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    empirical = torch.cov(torch.stack([x[:, 0], y1, y2]))
    assert torch.allclose(empirical, observation_cov(law, [0, 1, 1], [1.0, a1, a2]), atol=0.01)


# ----------------------------------------------------------------------------------------------- memory bottleneck
@pytest.mark.parametrize("g,m", [(4, 0), (8, 6), (12, 12)])
def test_sampler_kl_equals_memory_bottleneck(g, m):
    """Thm 4.4 with exact scores: the KL of one generated window given the context is MB (Eqn. 4.3), within 0.05."""
    law = _law(g)
    context, video = _one_step(law, m, 8192, 64, seed=g + m)  # KL estimate sd ~0.012 nats (0.022 at 4096)
    kl, bias = conditional_kl(video, context, law)
    mb = memory_bottleneck(law, range(M0), range(M0 - m, M0), range(M0, M0 + W))
    assert mb > 0.3  # a term worth measuring
    assert abs(kl - bias - mb) < 0.05, (kl - bias, mb)


def test_memory_term_drops_when_the_lag_source_enters_memory():
    """MB never grows with m (Prop. 4.6), stays flat while no lag-g source is a reference and drops as the sources
    enter; the sampler's first frame is then correlated with its source as the truth is, and uncorrelated before."""
    g, law = 8, _law(8)
    mb = [memory_bottleneck(law, range(M0), range(M0 - m, M0), range(M0, M0 + W)) for m in range(17)]
    assert all(b <= a + 1e-9 for a, b in zip(mb, mb[1:])), mb
    assert mb[1] - mb[g - W] < 0.05, mb  # no lag-g source of the window within reach: flat
    assert mb[g - 1] - mb[g] > 0.2 and mb[g - W] - mb[g] > 0.8, mb  # sources of frames 3..0 enter at m = g-3..g
    outside = sample_correlation(*_pair(law, g - 1, g))
    inside = sample_correlation(*_pair(law, g, g))
    true, _ = lag_correlation(law, M0, M0 - g, [])
    assert abs(outside) < 0.08 and abs(inside - true) < 0.08, (outside, inside, true)


def _pair(law, m: int, g: int):
    context, video = _one_step(law, m, 2048, 16, seed=100 + m)
    return video[:, 0], context[:, M0 - g]


# ----------------------------------------------------------------------------------------------- accumulation
def test_error_accumulation_grows_with_fewer_steps_and_with_a_score_error():
    """Per-segment KL: coarser levels give larger KL in every segment; a controlled score error makes it grow
    with the AR steps (Eqn. 4.4), while the exact score at the same levels stays flat."""
    cfg = TheoryConfig(rollout_samples=1024, accum_frames=32, accum_schedules=["outpainting"], levels_per_frame=[4, 16],
                       score_errors=[0.05], score_error_levels=16)
    rows = [r for r in accumulation_grid(cfg, Diffusion(1000)) if "measured_nats" in r]
    kl = {(r["levels_per_frame"], r["x0_gain_error"]): [] for r in rows}
    for r in rows:
        kl[(r["levels_per_frame"], r["x0_gain_error"])].append(r["measured_nats"])
    coarse, fine, erred = kl[(4, 0.0)], kl[(16, 0.0)], kl[(16, 0.05)]
    assert all(c > f + 0.5 for c, f in zip(coarse, fine)), (coarse, fine)
    assert erred[1] - erred[0] > 0.08 and abs(fine[1] - fine[0]) < 0.05, (erred, fine)
    assert all(r["bound_nats"] >= r["measured_nats"] for r in rows)  # Eqn. (4.4) with C = 1 holds (loosely)


def test_schedule_rollout_matches_sum_of_memory_bottlenecks():
    """Eqn. (4.1) with exact scores: outpainting's rollout KL equals IE + sum_k MB_k; FIFO stays below it."""
    cfg = TheoryConfig(rollout_samples=4096, schedules=["outpainting:32", "fifo:8"], schedule_memory_lengths=[4],
                       schedule_frames=8)
    out, fifo_row = schedule_grid(cfg, Diffusion(1000))
    assert abs(out["measured_nats"] - out["theory_nats"]) < 0.1, out
    assert fifo_row["measured_nats"] < fifo_row["theory_nats"], fifo_row


def test_marginal_kl_of_true_samples_is_its_bias():
    law = _law(4)
    kl, bias = marginal_kl(law.sample(4096, 8, torch.Generator().manual_seed(0)), law.cov(range(8)))
    assert abs(kl - bias) < 0.01 and bias > 0


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_dry_run_and_flag_errors(capsys):
    main(["--dry-run", "--lags", "4", "8"])
    assert '"lags": [\n    4,\n    8\n  ]' in capsys.readouterr().out
    for argv, flag in ((["--schedules", "bogus:4"], "--schedules"), (["--num-context", "8"], "--num-context"),
                       (["--levels-per-frame", "6"], "--levels-per-frame")):
        with pytest.raises(SystemExit):
            main(argv + ["--dry-run"])
        assert flag in capsys.readouterr().err


@pytest.mark.slow
def test_run_writes_tables_figures_and_mlflow(tmp_path, capsys):
    """The whole command on a tiny grid: files, >= 1000 px figures, one MLflow run holding the table cells."""
    import struct

    from mlflow import MlflowClient

    from training.theory import run_theory
    from training.tracking import default_tracking_uri

    cfg = TheoryConfig(out_dir=str(tmp_path / "theory"), num_samples=256, rollout_samples=256, lags=[4],
                       memory_lengths=[0, 4], steps=8, schedules=["outpainting:8"], schedule_memory_lengths=[4],
                       schedule_frames=8, accum_frames=16, segment=8, accum_schedules=["outpainting"],
                       levels_per_frame=[4], score_errors=[0.05], score_error_levels=4)
    result = run_theory(cfg)
    names = ("results.md", "results.csv", "config.json", "memory_bottleneck_exact.png", "error_accumulation_exact.png")
    for name in names:
        assert result["paths"][name].exists(), name
        if name.endswith(".png"):
            width = struct.unpack(">I", result["paths"][name].read_bytes()[16:20])[0]  # PNG IHDR width
            assert width >= 1000, (name, width)
    assert "| 4 | 4 | yes | 0.382 |" in result["paths"]["results.md"].read_text()  # MB(g=4, m=4), closed form
    assert len(result["paths"]["results.csv"].read_text().splitlines()) == 1 + len(result["rows"])
    run = MlflowClient(default_tracking_uri(cfg.out_dir)).get_run(result["run_id"])
    assert run.data.metrics["mb/g4_m4/theory_nats"] == pytest.approx(0.382, abs=5e-4)
    assert "[theory]" in capsys.readouterr().out
