"""Finding words that must fit their case: agreement in number, parts of tensors, zero-gradient hints."""

from __future__ import annotations

import pytest
import torch

from gradaudit.shapes import describe_dead
from gradaudit.wording import never_receives, percent, zero_incoming_hint


@pytest.mark.parametrize("dead, words", [
    (torch.tensor([False, True]), "element 1 of x [2] never receives"),
    (torch.tensor([True, True, True, False]), "elements 0-2 of x [4] never receive"),
    (torch.tensor([[False, True], [False, True]]), "column 1 of x [2, 2] never receives"),
    (torch.tensor([[True, False, True], [True, False, True]]), "columns 0, 2 of x [2, 3] never receive"),
    (torch.tensor([[True, False], [False, False], [False, True]]), "2 scattered elements of x [3, 2] never receive"),
])
def test_dead_parts_read_as_english(dead, words):
    text, _ = describe_dead(dead, "x")
    assert never_receives(text) == words


def test_an_index_along_a_dim_names_the_index_then_the_dim():
    dead = torch.zeros(2, 3, 4, dtype=torch.bool)
    dead[:, 0] = True
    assert describe_dead(dead, "`y`")[0] == "index 0 along dim 1 of `y` [2, 3, 4]"
    dead[:, 1] = True
    assert never_receives(describe_dead(dead, "y")[0]) == "indices 0-1 along dim 1 of y [2, 3, 4] never receive"


def test_zero_incoming_hint_names_what_passed_the_zero():
    assert zero_incoming_hint([("WhereBackward0", "l.py:3")]).startswith("a torch.where hides the branch")
    assert "atan's derivative is 0" in zero_incoming_hint([("AtanBackward0", None)])
    generic = zero_incoming_hint([("MulBackward0", "l.py:9")])
    assert "torch.where" not in generic and "mask" not in generic and "`Mul`" in generic


def test_percent_keeps_small_fractions_visible():
    assert [percent(f) for f in (0.6587, 0.004, 0.0, 1.0)] == ["66%", "0.4%", "0%", "100%"]
