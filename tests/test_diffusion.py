"""Diffusion: schedules, v-parameterisation, fused-SNR weights, noise clipping, training loss, DDIM step."""
import pytest
import torch

from training.diffusion import Diffusion


@pytest.mark.parametrize("schedule", ["sigmoid", "cosine"])
def test_alpha_bar_decreases_from_clean_to_noise(schedule):
    d = Diffusion(1000, schedule)
    abar = d.alpha_bar
    assert abar.shape == (1001,) and abar[0] == 1.0
    assert bool((abar[1:] < abar[:-1]).all())
    assert 0 < float(abar[-1]) < 1e-3 and float(abar[1]) > 0.99
    assert d.model_levels(torch.tensor([[0, 500, 1000]])).tolist() == [[0.0, 0.5, 1.0]]


def test_unknown_schedule_lists_valid_values():
    with pytest.raises(ValueError, match=r"schedule='linear': valid values are \('sigmoid', 'cosine'\)"):
        Diffusion(10, "linear")


def test_v_roundtrip_and_exact_ddim():
    d = Diffusion(100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 1, 4, 4, generator=g)
    noise = torch.randn(2, 3, 1, 4, 4, generator=g)
    k = torch.tensor([[1, 50, 100], [0, 7, 99]])
    x_k = d.q_sample(x0, k, noise)
    v = d.v_target(x0, k, noise)
    x0_hat, eps_hat = d.predict_x0_eps(x_k, k, v)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat[:, 1:], noise[:, 1:], atol=1e-4)  # eps is undefined on the clean frame (0,0)
    # a deterministic DDIM step with the exact v lands on the forward process with the same noise
    k_to = torch.tensor([[0, 20, 100], [0, 3, 10]])  # (0,2): k_to == k_from -> unchanged; (1,0): clean -> unchanged
    out = d.ddim_step(x_k, k, k_to, v)
    want = d.q_sample(x0, k_to, noise)
    assert torch.allclose(out[:, :2], want[:, :2], atol=1e-4) and torch.allclose(out[1], want[1], atol=1e-4)
    assert torch.equal(out[0, 2], x_k[0, 2])
    # eta > 0 needs noise from the caller, and adds it
    with pytest.raises(ValueError, match="eta > 0 needs `noise`"):
        d.ddim_step(x_k, k, k_to, v, eta=1.0)
    z = torch.randn(x_k.shape, generator=g)
    assert (d.ddim_step(x_k, k, k_to, v, noise=z, eta=1.0)[0, 1] - out[0, 1]).abs().max() > 1e-3


def test_fused_snr_weights_follow_diffusion_forcing():
    d = Diffusion(1000, snr_clip=5.0, cum_snr_decay=0.96)
    k = torch.tensor([[10, 400, 900, 900]])
    w = d.loss_weights(k)
    snr = d.snr(k)[0]
    # first frame: nothing accumulated, so the fused weight is the min-SNR v weight min(snr, 5) / (snr + 1)
    assert torch.allclose(w[0, 0], (snr[0].clamp(max=5) / (snr[0] + 1)).float())
    # frames 1 and 2 by hand, with diffusion forcing's running mean that STARTS at the first frame's value:
    # c_0 = min(snr_0, 5)/5, c_1 = 0.96 c_0 + 0.04 min(snr_1, 5)/5; frame t uses c_{t-1}:
    # fused_t = 1 - (1 - 0.96 c_{t-1})(1 - snr_t/5), w_t = 5 clipped_fused_t / (5 fused_t + 1)
    def by_hand(c, t):
        nc, n = min(float(snr[t]), 5.0) / 5, float(snr[t]) / 5
        return 5 * (1 - (1 - 0.96 * c) * (1 - nc)) / (5 * (1 - (1 - 0.96 * c) * (1 - n)) + 1)

    c0 = min(float(snr[0]), 5.0) / 5
    c1 = 0.96 * c0 + 0.04 * min(float(snr[1]), 5.0) / 5
    assert abs(float(w[0, 1]) - by_hand(c0, 1)) < 1e-5
    assert abs(float(w[0, 2]) - by_hand(c1, 2)) < 1e-5
    assert abs(float(w[0, 1]) - by_hand(0.04 * c0, 1)) > 1e-3  # the zero-started mean would give another weight
    # shifted by one frame: a frame's weight depends on earlier frames' levels, never on its successors'
    k2 = k.clone()
    k2[0, 2] = 5
    w2 = d.loss_weights(k2)
    assert torch.equal(w2[0, :2], w[0, :2]) and float(w2[0, 3]) > float(w[0, 3])
    assert torch.allclose(Diffusion(1000, use_fused_snr=False).loss_weights(k)[0, 0], w[0, 0])


def test_noise_is_clipped():
    d = Diffusion(10, clip_noise=0.5)
    z = d.randn((1000,), torch.Generator().manual_seed(0), "cpu")
    assert float(z.abs().max()) == 0.5


def _batch(memory: bool):
    g = torch.Generator().manual_seed(1)
    b = {"x": torch.rand(2, 3, 3, 4, 4, generator=g) * 2 - 1, "actions": torch.randint(0, 7, (2, 3), generator=g)}
    if memory:
        b.update(mem_x=torch.rand(2, 5, 3, 4, 4, generator=g), mem_actions=torch.zeros(2, 5, dtype=torch.long),
                 mem_mask=torch.tensor([[True] * 5, [False] * 2 + [True] * 3]))
    return b


@pytest.mark.parametrize("memory", [False, True])
def test_training_loss(memory):
    d = Diffusion(100)
    batch = _batch(memory)
    seen = {}

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x, noise_levels, actions, mem_x=None, mem_actions=None, mem_mask=None):
            seen.update(levels=noise_levels, mem_x=mem_x, mem_mask=mem_mask)
            return self.scale * x

    model = Toy()
    loss, stats = d.training_loss(model, batch, torch.Generator().manual_seed(3))
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and model.scale.grad is not None and model.scale.grad != 0
    assert set(stats) >= {"loss", "mse_v", "loss_weight_mean"} and stats["loss"] == pytest.approx(loss.item())
    levels = seen["levels"]
    assert levels.shape == (2, 3) and levels.dtype == torch.float32 and float(levels.min()) > 0
    assert len(set(levels.flatten().tolist())) > 1  # independent per-frame levels (diffusion forcing)
    if memory:  # memory is passed clean and untouched
        assert seen["mem_x"] is batch["mem_x"] and seen["mem_mask"] is batch["mem_mask"]
    else:
        assert seen["mem_x"] is None
    again, _ = d.training_loss(model, batch, torch.Generator().manual_seed(3))
    assert again.item() == pytest.approx(loss.item())


def test_training_loss_is_zero_for_the_exact_v():
    """A predictor that knows x0 returns the exact v from (x_k, level): the loss must vanish, which ties
    q_sample, model_levels and v_target together."""
    d = Diffusion(1000)
    batch = _batch(False)

    def oracle(x, noise_levels, actions, **_):
        k = torch.round(noise_levels * d.num_timesteps).long()
        a = d.alpha_bar[k].float()[..., None, None, None]
        eps = (x - a.sqrt() * batch["x"]) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * batch["x"]

    loss, _ = d.training_loss(oracle, batch, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-8
