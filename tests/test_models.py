"""Denoiser tests (CPU, tiny preset): shapes for every memory x compression, seeding, causality, masking,
chunked attention, configuration errors, and a tiny model overfitting a few clips for each memory structure."""
import itertools

import pytest
import torch

from training.models import COMPRESSIONS, MEMORIES, ModelConfig, build_denoiser
from training.models.layers import TemporalAttention, attention

B, T, M, R = 2, 4, 5, 8
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core box two OpenMP threads spin against other processes (100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COMBOS = [(m, c) for m, c in itertools.product(MEMORIES, COMPRESSIONS) if not (m == "none" and c != "none")]


def make(memory="none", compression="none", budget=3, resolution=R, window=T, seed=0):
    cfg = ModelConfig(preset="tiny", resolution=resolution, memory=memory, memory_length=M, compression=compression,
                      budget=budget, window=window)
    net = build_denoiser(cfg, seed=seed)
    # zero-initialised output layers make a fresh model output 0 everywhere; perturb every weight so that
    # causality and masking tests compare outputs that really depend on their inputs
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def inputs(seed=0, b=B, t=T, m=M, r=R):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, m, dtype=torch.bool)
    mask[0, :2] = False  # first clip has a short history: two left-padded frames
    return dict(x=torch.randn(b, t, 3, r, r, generator=g), noise_levels=torch.rand(b, t, generator=g),
                actions=torch.randint(0, 7, (b, t), generator=g), mem_x=torch.randn(b, m, 3, r, r, generator=g),
                mem_actions=torch.randint(0, 7, (b, m), generator=g), mem_mask=mask)


def run(net, d):
    with torch.no_grad():
        return net(d["x"], d["noise_levels"], d["actions"], d["mem_x"], d["mem_actions"], d["mem_mask"])


@pytest.mark.parametrize("memory,compression", COMBOS)
def test_output_shape_every_combination(memory, compression):
    net = make(memory, compression)
    d = inputs()
    out = net(d["x"], d["noise_levels"], d["actions"], d["mem_x"], d["mem_actions"], d["mem_mask"])
    assert out.shape == (B, T, 3, R, R)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # no memory at all (first window of an episode) and a shorter memory than memory_length both work
    assert net(d["x"], d["noise_levels"], d["actions"]).shape == (B, T, 3, R, R)
    short = net(d["x"], d["noise_levels"], d["actions"], d["mem_x"][:, 3:], d["mem_actions"][:, 3:])
    assert short.shape == (B, T, 3, R, R)


@pytest.mark.parametrize("memory", MEMORIES[1:])
def test_short_history_equals_left_padding(memory):
    """M < memory_length is left-padded with masked frames: same output as passing the padding explicitly."""
    net, d = make(memory), inputs()
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[:, :2] = False
    padded = net(d["x"], d["noise_levels"], d["actions"], d["mem_x"], d["mem_actions"], mask)
    short = net(d["x"], d["noise_levels"], d["actions"], d["mem_x"][:, 2:], d["mem_actions"][:, 2:])
    torch.testing.assert_close(padded, short)


def test_same_seed_same_init_and_output():
    a, b, c = (build_denoiser(ModelConfig(preset="tiny", resolution=R, memory="prepend", memory_length=M,
                                          compression="joint", budget=2), seed=s) for s in (0, 0, 1))
    for (n, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    x, y = make("prepend", "joint", seed=3), make("prepend", "joint", seed=3)
    assert torch.equal(run(x, inputs(1)), run(y, inputs(1)))


@pytest.mark.parametrize("memory,compression", [(m, "none") for m in MEMORIES] + [("prepend", "joint"),
                                                                                 ("concat", "modulated")])
def test_causal_in_time(memory, compression):
    """Perturbing frame s, its noise level or a future action changes no output frame before s."""
    net, d = make(memory, compression), inputs()
    base = run(net, d)
    s = 2
    e = dict(d)
    e["x"] = d["x"].clone()
    e["x"][:, s:] += torch.randn_like(d["x"][:, s:])
    e["noise_levels"] = d["noise_levels"].clone()
    e["noise_levels"][:, s:] = 1 - d["noise_levels"][:, s:]
    e["actions"] = d["actions"].clone()
    e["actions"][:, s:] = (d["actions"][:, s:] + 1) % 7
    out = run(net, e)
    torch.testing.assert_close(out[:, :s], base[:, :s], rtol=1e-5, atol=1e-5)
    assert (out[:, s:] - base[:, s:]).abs().max() > 1e-3  # the perturbation does reach later frames
    f = dict(d)  # an action alone: actions[t] affects frame t and later frames only
    f["actions"] = d["actions"].clone()
    f["actions"][:, T - 1] = (d["actions"][:, T - 1] + 3) % 7
    out = run(net, f)
    torch.testing.assert_close(out[:, :T - 1], base[:, :T - 1], rtol=1e-5, atol=1e-5)
    assert (out[:, T - 1] - base[:, T - 1]).abs().max() > 1e-4


@pytest.mark.parametrize("memory,compression", [c for c in COMBOS if c[0] != "none"])
def test_masked_memory_frames_have_no_effect(memory, compression):
    net, d = make(memory, compression), inputs()
    base = run(net, d)
    e = dict(d)
    e["mem_x"] = d["mem_x"].clone()
    e["mem_x"][0, :2] = torch.randn(2, 3, R, R) * 5  # clip 0's two masked frames
    e["mem_actions"] = d["mem_actions"].clone()
    e["mem_actions"][0, :2] = (d["mem_actions"][0, :2] + 1) % 7
    torch.testing.assert_close(run(net, e), base, rtol=1e-5, atol=1e-5)
    f = dict(d)  # while a valid memory frame does matter
    f["mem_x"] = d["mem_x"].clone()
    f["mem_x"][0, -1] += 1.0
    assert (run(net, f)[0] - base[0]).abs().max() > 1e-4
    torch.testing.assert_close(run(net, f)[1], base[1], rtol=1e-5, atol=1e-5)  # and only its own clip


def test_chunked_temporal_attention_equals_unchunked():
    torch.manual_seed(0)
    layer = TemporalAttention(16, 8)
    torch.nn.init.normal_(layer.proj.weight)
    x = torch.randn(3, 6, 16, 4, 5)  # B*H*W = 60 sequences
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, :2] = False
    with torch.no_grad():
        full = [layer(x), layer(x, valid)]
        layer.max_rows = 7  # 60 sequences in chunks of 7
        chunked = [layer(x), layer(x, valid)]
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b)
    q, k, v = torch.randn(3, 10, 2, 5, 4).unbind(0)
    torch.testing.assert_close(attention(q, k, v, causal=True, max_rows=3), attention(q, k, v, causal=True))


def test_attention_key_mask_matches_dropping_keys():
    """A masked key gets no weight: same result as deleting it (causal, grouped sequences)."""
    q, k, v = torch.randn(3, 4, 2, 6, 8).unbind(0)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 1] = False
    out = attention(q, k, v, causal=True, key_valid=valid)
    keep = [0, 2, 3, 4, 5]  # group 0 = sequences 0,1; query 5 sees keys 0,2,3,4,5
    ref = torch.nn.functional.scaled_dot_product_attention(q[:2, :, 5:], k[:2, :, keep], v[:2, :, keep])
    torch.testing.assert_close(out[:2, :, 5:], ref)


@pytest.mark.parametrize("kwargs,field", [
    (dict(preset="huge"), "preset"), (dict(memory="lstm"), "memory"), (dict(compression="zip"), "compression"),
    (dict(memory="prepend", memory_length=8, compression="joint", budget=9), "budget"),
    (dict(resolution=15), "resolution"), (dict(memory_length=-1), "memory_length"),
    (dict(compression="joint"), "compression"), (dict(window=0), "window"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_budget_error_names_both_fields():
    with pytest.raises(ValueError, match="budget=9.*memory_length=8"):
        ModelConfig(memory="concat", memory_length=8, compression="modulated", budget=9)


def test_wrong_input_shape_is_explained():
    net = make()
    with pytest.raises(ValueError, match="resolution"):
        net(torch.zeros(1, 2, 3, 2 * R, 2 * R), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("memory", MEMORIES)
def test_tiny_model_overfits_a_few_clips(memory):
    """Adam 3e-3 on 2 clips of 3 frames at 8x8 with C1's training loss, cycling two fixed noise draws (an
    optimisation check, not a generalisation one): the loss falls by more than 10x in 50 steps."""
    from training.diffusion import Diffusion

    cfg = ModelConfig(preset="tiny", resolution=8, memory=memory, memory_length=2, window=3)
    net = build_denoiser(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = dict(x=torch.rand(2, 3, 3, 8, 8, generator=g) * 2 - 1, actions=torch.randint(0, 7, (2, 3), generator=g),
                 mem_x=torch.rand(2, 2, 3, 8, 8, generator=g) * 2 - 1,
                 mem_actions=torch.randint(0, 7, (2, 2), generator=g), mem_mask=torch.ones(2, 2, dtype=torch.bool))
    diffusion = Diffusion(num_timesteps=1000)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for step in range(50):
        loss, _ = diffusion.training_loss(net, batch, torch.Generator().manual_seed(step % 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first / 10, (first, last)
