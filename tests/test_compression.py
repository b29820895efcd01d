"""Memory compression and concat's merge (docs/models.md, issue 12 item 5): an untrained compressor subsamples the
whole memory evenly instead of truncating it, a trained one reads every memory frame, and channel concat merges
frames with their actions in transformer blocks (paper App. F/G) before its convolution. Tiny sizes, one thread."""
import pytest
import torch

from training.models import ModelConfig, build_denoiser
from training.models.compression import Compressor

R, M, K = 8, 8, 3  # resolution, memory_length, budget


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compressor(mode, seed=0, trained=False):
    torch.manual_seed(seed)
    net = Compressor(mode, 3, R, 4, 32, 1, 8, 16, K)
    if trained:  # stands in for training: the zero-initialised correction head becomes non-zero
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def memories(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, M, dtype=torch.bool)
    valid[1:, :3] = False  # clip 1: 5 valid frames, left-padded
    return torch.randn(b, M, 3, R, R, generator=g), torch.randn(b, M, 16, generator=g), valid


@pytest.mark.parametrize("mode", ["joint", "modulated"])
def test_untrained_compressor_subsamples_the_whole_memory(mode):
    """At initialisation the compressed frames are K raw frames evenly spaced over each clip's valid memory, oldest
    and newest included (not the last K frames), so a frame older than the last K already matters."""
    net = compressor(mode)
    mem_x, act, valid = memories()
    with torch.no_grad():
        frames, acts, v = net(mem_x, act, valid)
        assert net.kept_indices(valid).tolist() == [[0, 3, 7], [3, 5, 7]]
        torch.testing.assert_close(frames[0], mem_x[0, [0, 3, 7]])
        torch.testing.assert_close(frames[1], mem_x[1, [3, 5, 7]])
        assert v.all()
        if mode == "modulated":
            torch.testing.assert_close(acts[0], act[0, [0, 3, 7]])
        older = mem_x.clone()
        older[0, 0] += 1.0  # the oldest frame, M - K = 5 frames before the last K
        assert (net(older, act, valid)[0][0] - frames[0]).abs().max() > 0.5
        short = valid.clone()
        short[0, :6] = False  # 2 valid frames < K: the last K positions, the oldest of them masked
        assert net.kept_indices(short)[0].tolist() == [5, 6, 7]
        assert net(mem_x, act, short)[2][0].tolist() == [False, True, True]


@pytest.mark.parametrize("mode", ["joint", "modulated"])
def test_trained_compressor_reads_every_memory_frame(mode):
    """Through the transformer (causal temporal attention over all M frames) every valid frame, kept or not,
    changes the compressed memory; masked frames never do."""
    net = compressor(mode, trained=True)
    mem_x, act, valid = memories()
    with torch.no_grad():
        base = net(mem_x, act, valid)[0]
        for t in range(M):
            moved = mem_x.clone()
            moved[:, t] += 1.0
            diff = (net(moved, act, valid)[0] - base).abs().flatten(1).amax(1)
            assert diff[0] > 1e-3, t
            assert (diff[1] > 1e-3) == bool(valid[1, t]), t


@pytest.mark.parametrize("memory", ["prepend", "concat"])
def test_untrained_compressor_lets_the_denoiser_read_memory_older_than_the_budget(memory):
    """A trained U-Net with an untrained (modulated: no other path from skipped frames at initialisation)
    compressor: a memory frame older than the last `budget` (the oldest, kept by the even subsampling) changes
    the prediction; under truncation it could not."""
    cfg = ModelConfig(preset="tiny", resolution=R, memory=memory, memory_length=M, compression="modulated",
                      budget=K, window=2)
    net = build_denoiser(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.startswith("compressor."):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    net.eval()
    mem_x, _, _ = memories(b=1)
    x, levels = torch.randn(1, 2, 3, R, R, generator=g), torch.rand(1, 2, generator=g)
    actions = torch.zeros(1, 2, dtype=torch.long)
    mem_a = torch.zeros(1, M, dtype=torch.long)
    with torch.no_grad():
        base = net(x, levels, actions, mem_x, mem_a)
        older = mem_x.clone()
        older[:, 0] += 1.0
        assert (net(x, levels, actions, older, mem_a) - base).abs().max() > 1e-4


def test_concat_merges_frames_and_actions_in_transformer_blocks():
    """Channel concat without compression runs the modulated transformer over all memory frames (App. F: "several
    transformer blocks to merge the action information and the frame information") before its convolution: with
    the convolution's own action map removed, a memory action still changes the prediction. Untrained, the merge
    passes the frames through unchanged."""
    cfg = ModelConfig(preset="tiny", resolution=R, memory="concat", memory_length=M, window=2)
    net = build_denoiser(cfg, seed=0).eval()
    assert net.compressor.mode == "modulated" and net.compressor.budget == M
    mem_x, _, valid = memories(b=1)
    mem_a = torch.randint(0, 7, (1, M), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        merged, _, _ = net._memory(1, mem_x, mem_a, None, mem_x)
        torch.testing.assert_close(merged, mem_x)
        g = torch.Generator().manual_seed(3)
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        net.mem_act.weight.zero_()
        net.mem_act.bias.zero_()
        x, levels = torch.randn(1, 2, 3, R, R, generator=g), torch.rand(1, 2, generator=g)
        actions = torch.zeros(1, 2, dtype=torch.long)
        base = net(x, levels, actions, mem_x, mem_a)
        other = mem_a.clone()
        other[0, 2] = (other[0, 2] + 1) % 7  # not the last one (that one also conditions frame 0's embedding)
        assert (net(x, levels, actions, mem_x, other) - base).abs().max() > 1e-4
