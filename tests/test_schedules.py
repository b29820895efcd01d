"""ARSchedule: Requirement 1 (paper Sec. 3) accepted for the presets, each clause rejected by name."""
import pytest

from training.schedules import ARSchedule, LastFrames, build_schedule, df_chunked, df_pyramid, fifo, outpainting


@pytest.mark.parametrize("sched", [outpainting(4, 10), outpainting(16, 50), fifo(4), fifo(16), df_pyramid(8, 3),
                                   df_chunked(16, 4, 5), df_chunked(6, 3, 1)], ids=lambda s: s.describe())
def test_presets_satisfy_requirement_1(sched):
    w, d, T = sched.w, sched.delta, sched.num_levels
    assert sched.levels_in[-d:] == [T] * d and sched.levels_out[:d] == [0] * d
    assert all(sched.levels_in[i] == sched.levels_out[i + d] for i in range(w - d))
    sched.validate_reference(LastFrames(16), num_known_start=0)
    # sub-steps: contiguous, every frame moves down by the same amount, ends on L_out
    subs = sched.substep_levels()
    assert len(subs) == sched.substeps
    assert subs[0][0] == sched.levels_in and subs[-1][1] == sched.levels_out
    for (_, t), (f2, _) in zip(subs, subs[1:]):
        assert t == f2
    for f, t in subs:
        drops = {a - b for a, b in zip(f, t)}
        assert len(drops) == 1 and drops.pop() >= 1


def test_preset_levels():
    assert fifo(4).levels_in == [1, 2, 3, 4] and fifo(4).levels_out == [0, 1, 2, 3] and fifo(4).delta == 1
    s = outpainting(3, 7)
    assert (s.delta, s.levels_in, s.levels_out, s.substeps) == (3, [7, 7, 7], [0, 0, 0], 7)
    c = df_chunked(4, 2, 5)
    assert (c.delta, c.levels_in, c.levels_out, c.num_levels) == (2, [5, 5, 10, 10], [0, 0, 5, 5], 10)
    p = df_pyramid(3, 2)
    assert (p.levels_in, p.levels_out, p.substeps) == ([2, 4, 6], [0, 2, 4], 2)
    assert ARSchedule(4, 1, [2, 4, 6, 8], [0, 2, 4, 6], substeps=1).substep_levels() == [([2, 4, 6, 8], [0, 2, 4, 6])]
    assert build_schedule("df_chunked", 8, 3).delta == 4


@pytest.mark.parametrize("clause,w,delta,lin,lout,where", [
    ("monotonicity", 4, 1, [2, 1, 3, 4], [1, 0, 2, 3], r"levels_in\[0\]=2 > levels_in\[1\]=1"),
    ("monotonicity", 4, 1, [1, 2, 3, 4], [0, 2, 2, 3], r"levels_out\[1\]=2 is not < levels_in\[1\]=2"),
    ("0-T boundary", 4, 1, [1, 2, 3, 3], [0, 1, 2, 2], r"levels_in\[3\]=3 != T=4"),
    ("0-T boundary", 4, 2, [2, 2, 4, 4], [1, 1, 2, 2], r"levels_out\[0\]=1 != 0"),
    ("circularity", 4, 1, [2, 2, 3, 4], [0, 1, 2, 3], r"levels_in\[0\]=2 != levels_out\[0\+delta=1\]=1"),
    ("constant pace", 4, 2, [3, 3, 4, 4], [0, 0, 3, 3], r"levels_in\[2\]-levels_out\[2\]=1 != "),
])
def test_each_clause_is_named(clause, w, delta, lin, lout, where):
    with pytest.raises(ValueError, match=rf"Requirement 1 \({clause}\) violated: {where}"):
        ARSchedule(w, delta, lin, lout, num_levels=4)


def test_causality_clause_is_named():
    class Future(LastFrames):
        def indices(self, num_known):
            return list(range(num_known - 1, num_known + 1))

    with pytest.raises(ValueError, match=r"Requirement 1 \(causality\) violated at AR step 0: reference 1 is frame 2"):
        fifo(4).validate_reference(Future(2), num_known_start=2)


def test_shape_errors_name_the_field():
    with pytest.raises(ValueError, match="delta=5"):
        ARSchedule(4, 5, [4] * 4, [0] * 4)
    with pytest.raises(ValueError, match="levels_in has 3"):
        ARSchedule(4, 4, [4] * 3, [0] * 4)
    with pytest.raises(ValueError, match=r"levels_out\[0\]=-1"):
        ARSchedule(2, 2, [4, 4], [-1, 0])
    with pytest.raises(ValueError, match="substeps=9"):
        ARSchedule(2, 2, [4, 4], [0, 0], substeps=9)
    with pytest.raises(ValueError, match="chunk=3: must divide w=4"):
        df_chunked(4, 3, 2)
    with pytest.raises(ValueError, match=r"valid values are \('outpainting', 'fifo'"):
        build_schedule("pyramid", 4, 2)
