"""The dense-gradient shortcut of `Track.add` keeps exactly the counts of the plain per-element sum."""

import random

import pytest
import torch

from gradaudit.tracks import Track


def _reference(grads: list, shape: list[int]) -> torch.Tensor:
    counts = torch.zeros(shape, dtype=torch.int64)
    for g in grads:
        if g is not None:
            counts += (g != 0).to(torch.int64)
    return counts


def _grad(kind: str, shape: list[int], rng: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    g = torch.randn(shape, generator=rng) + 3.0  # no zero
    if kind == "zeros":
        g[0] = 0.0
    elif kind == "sparse":
        g = g * (torch.rand(shape, generator=rng) < 0.5)
    elif kind == "nan":
        g.view(-1)[1] = float("nan")
    elif kind == "allzero":
        g = torch.zeros(shape)
    return g


@pytest.mark.parametrize("seed", range(40))
def test_counts_match_the_plain_sum(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shape = [3, 5]
    kinds = [rng.choice(["dense", "dense", "dense", "none", "zeros", "sparse", "nan", "allzero"])
             for _ in range(rng.randint(1, 8))]
    grads = [_grad(k, shape, gen) for k in kinds]
    track = Track("x", shape, "float32", True)
    for i, g in enumerate(grads):
        track.add(g)
        expected = _reference(grads[: i + 1], shape)
        # `dead` is read every draw by the stop rule: it must be right before the counts exist.
        assert track.dead == int((expected == 0).sum()), kinds
    assert torch.equal(track.alive_counts.to(torch.int64), expected), kinds
    assert track.dead == int((expected == 0).sum())
    assert track.verdict(len(grads)) in ("ok", "nonfinite", "none", "zero", "partial")


def test_dense_draws_make_no_counts_until_a_zero_shows():
    track = Track("x", [4], "float32", True)
    track.add(torch.ones(4))
    track.add(None)
    track.add(torch.ones(4))
    assert track._counts is None and track.dead == 0
    track.add(torch.tensor([1.0, 0.0, 2.0, 3.0]))
    assert track._counts is not None
    assert track.alive_counts.tolist() == [3, 2, 3, 3]


def test_only_none_draws_leave_every_element_dead():
    track = Track("x", [2, 2], "float32", True)
    assert track.alive_counts is None and track.dead == 0
    track.add(None)
    assert track.dead == 4
    assert track.alive_counts.tolist() == [[0, 0], [0, 0]]
    assert track.verdict(1) == "none"


@pytest.mark.parametrize("first", [True, False], ids=["first-draw", "later-draw"])
@pytest.mark.parametrize("bad, count", [(float("nan"), 1), (float("inf"), 1), (float("-inf"), 1)])
def test_a_nonfinite_element_is_counted_and_a_finite_twin_is_not(bad, count, first):
    """The common path reads only a few reductions (the first draw: the smallest magnitude and the
    norm; later ones: the smallest and largest magnitude): a NaN or an Inf anywhere must still be
    counted (its twin, the same gradient finite, counts none), in the first draw or a later one."""
    track = Track(name="x", shape=[4, 3], dtype="float32", requires_grad=True)
    twin = Track(name="x", shape=[4, 3], dtype="float32", requires_grad=True)
    good = torch.randn(4, 3) + 5.0
    bad_grad = good.clone()
    bad_grad[2, 1] = bad
    for t, odd in ((track, bad_grad), (twin, good)):
        for g in ((odd, good) if first else (good, odd)):
            t.add(g.clone(), consume=True)
    assert track.nonfinite == count and track.verdict(2) == "nonfinite"
    assert twin.nonfinite == 0 and twin.verdict(2) == "ok" and twin.counts_implicit


def test_finite_float64_values_whose_norm_overflows_are_not_nonfinite():
    """A first-draw norm that is Inf in float64 too comes from finite values: the largest magnitude
    says so, and the elements are not counted as NaN/Inf."""
    track = Track(name="x", shape=[4], dtype="float64", requires_grad=True)
    track.add(torch.full((4,), 1e300, dtype=torch.float64), consume=True)
    assert track.nonfinite == 0 and track.verdict(1) == "ok"
    assert track.norms == [float("inf")]


def test_the_norm_survives_a_low_precision_overflow_and_is_the_first_draws():
    """float16 magnitudes near its maximum are finite while their norm overflows: no non-finite
    count, and grad_norm is read in float64 (the first draw's; later draws skip that pass)."""
    track = Track(name="x", shape=[1000], dtype="float16", requires_grad=True)
    big = torch.full((1000,), 60000.0, dtype=torch.float16)
    track.add(big)
    track.add(torch.ones(1000, dtype=torch.float16))
    result = track.to_result(2)
    assert track.nonfinite == 0 and result.grad == "ok"
    assert result.grad_norm == pytest.approx(60000.0 * 1000 ** 0.5)


@pytest.mark.parametrize("kinds", [["dense", "dense"], ["dense", "zeros", "dense"], ["sparse", "nan", "dense"],
                                   ["none", "allzero", "dense"]])
def test_a_consumed_gradient_counts_the_same_and_only_it_is_changed(kinds):
    """`consume=True` (the draw loop's gradients, read by nothing after) measures the gradient in
    place: the same counts, norms and verdict as a copy would give; without it the caller's
    tensor is left as it was."""
    rng = torch.Generator().manual_seed(3)
    shape = [4, 5]
    grads = [_grad(kind, shape, rng) for kind in kinds]
    kept, given = Track("x", shape, "float32", True), Track("x", shape, "float32", True)
    for g in grads:
        before = None if g is None else g.clone()
        kept.add(g)
        if g is not None:
            assert torch.equal(g.nan_to_num(), before.nan_to_num())  # untouched without consume
        given.add(None if g is None else g.clone(), consume=True)
    assert torch.equal(kept.alive_counts, given.alive_counts)
    assert (kept.norms, kept.nonfinite, kept.dense_draws) == (given.norms, given.nonfinite, given.dense_draws)
    assert kept.verdict(len(grads)) == given.verdict(len(grads))


def test_consume_measures_in_place():
    g = -torch.ones(3)
    Track("x", [3], "float32", True).add(g, consume=True)
    assert torch.equal(g, torch.ones(3))  # its magnitudes: the tensor was taken over


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("odd", ["nan", "inf", "-inf", "-0.0", "0.0", "denormal", "max", "-max"])
def test_a_later_draw_reads_every_dtype_as_the_masked_count_would(dtype, odd):
    """Later draws read the magnitudes' min and max as integers (float32, float16, bfloat16) or
    floats (float64): for each special value, the NaN/Inf count and the zero counts are the exact
    ones (`isfinite`, `!= 0`), against the plain per-element reference."""
    info = torch.finfo(dtype)
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-0.0": -0.0, "0.0": 0.0,
             "denormal": info.smallest_normal / 4, "max": info.max, "-max": -info.max}[odd]
    dense = torch.linspace(1.0, 2.0, 12).to(dtype).reshape(3, 4)
    later = dense.clone()
    later[1, 2] = value
    track = Track("x", [3, 4], str(dtype).removeprefix("torch."), True)
    for g in (dense, later, dense):
        track.add(g.clone(), consume=True)
    expected_nonfinite = int((~torch.isfinite(later)).sum())
    assert track.nonfinite == expected_nonfinite
    expected = _reference([dense, later, dense], [3, 4])
    counts = track.alive_counts.to(torch.int64)
    assert torch.equal(counts, expected), (odd, counts)
    assert track.dead == 0  # draws 1 and 3 gave every element a gradient


@pytest.mark.parametrize("dtype, as_int", [(torch.float32, torch.int32), (torch.float16, torch.int16),
                                           (torch.bfloat16, torch.int16)])
def test_a_nan_whose_sign_the_magnitude_kept_is_not_finite(dtype, as_int):
    """The integer reading's guard: a NaN with its sign bit set reads as a negative integer, below
    every magnitude; it must say "not finite" and "not surely dense" (CPU's abs clears that bit, other
    devices need not). Its twin, the same magnitudes without it, is finite and dense."""
    from gradaudit.tracks import _smallest_and_finite

    magnitudes = torch.ones(8, dtype=dtype)
    assert _smallest_and_finite(magnitudes)[1] and _smallest_and_finite(magnitudes)[0] > 0
    bits = magnitudes.view(as_int)
    bits[3] = torch.tensor([float("nan")], dtype=dtype).view(as_int)[0] | (1 << (bits.element_size() * 8 - 1))
    assert torch.isnan(magnitudes[3])
    low, finite = _smallest_and_finite(magnitudes)
    assert not finite and not low > 0


SPARSE_INPUTS = {"idx": dict(shape=(64,), dtype="int64", init="randint", high=6), "x": dict(shape=(64,))}


@pytest.mark.parametrize("seed", range(5))
def test_a_sparse_gradient_is_audited_as_its_dense_values(seed):
    """nn.Embedding(sparse=True) gives its weight a sparse COO gradient: it is counted as the dense
    tensor it stands for (the rows it left out are zeros), not an error of the audit."""
    import gradaudit
    from gradaudit.api import Spec
    from tests.losses.sparse import SparseEmbeddingLoss

    inputs = {k: Spec(**v) for k, v in SPARSE_INPUTS.items()}
    result = gradaudit.audit(SparseEmbeddingLoss(), inputs, devices=["cpu"], seed=seed).results[0]
    assert result.status == "pass" and result.error is None, result
    weight = next(i for i in result.inputs if i.name == "param:emb.weight")
    assert weight.grad == "ok" and weight.grad_norm > 0


@pytest.mark.parametrize("seed", range(5))
def test_rows_a_sparse_gradient_never_reaches_are_a_partial_gradient(seed):
    import gradaudit
    from gradaudit.api import Spec
    from tests.losses.sparse import SparseEmbeddingDeadRows

    inputs = {k: Spec(**v) for k, v in SPARSE_INPUTS.items()}
    result = gradaudit.audit(SparseEmbeddingDeadRows(), inputs, devices=["cpu"], seed=seed).results[0]
    weight = next(i for i in result.inputs if i.name == "param:emb.weight")
    assert weight.grad == "partial" and weight.zero_fraction == 0.5
    assert "partial-grad" in [f.id for f in result.findings]


def test_sparse_counts_match_the_plain_sum_of_the_dense_values():
    gen = torch.Generator().manual_seed(0)
    dense = [torch.randn(6, 3, generator=gen) * (torch.rand(6, 1, generator=gen) < 0.5) for _ in range(4)]
    track = Track("w", [6, 3], "float32", True)
    for g in dense:
        track.add(g.to_sparse(), consume=True)
    assert torch.equal(track.alive_counts.to(torch.int64), _reference(dense, [6, 3]))
