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


@pytest.mark.parametrize("bad, count", [(float("nan"), 1), (float("inf"), 1), (float("-inf"), 1)])
def test_a_nonfinite_element_is_counted_and_a_finite_twin_is_not(bad, count):
    """The common path reads only the magnitudes' min and max: a NaN or an Inf anywhere must still
    be counted (its twin, the same gradient finite, counts none), in any draw, not just the first."""
    track = Track(name="x", shape=[4, 3], dtype="float32", requires_grad=True)
    twin = Track(name="x", shape=[4, 3], dtype="float32", requires_grad=True)
    good = torch.randn(4, 3) + 5.0
    bad_grad = good.clone()
    bad_grad[2, 1] = bad
    for t, later in ((track, bad_grad), (twin, good)):
        t.add(good)
        t.add(later)
    assert track.nonfinite == count and track.verdict(2) == "nonfinite"
    assert twin.nonfinite == 0 and twin.verdict(2) == "ok" and twin.counts_implicit


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
