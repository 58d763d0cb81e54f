"""The cast-made masks are exactly the comparisons they stand for, on every dtype and special value."""

import pytest
import torch

from gradaudit.masks import nonzero, zero

SPECIAL = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45, 2.0**-140, 3.5, -7.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64])
def test_float_masks_are_the_comparisons(dtype):
    t = torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)
    assert torch.equal(nonzero(t), t != 0)
    assert torch.equal(zero(t), t == 0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_count_masks_are_the_comparisons(dtype):
    t = torch.tensor([0, 1, 2, 0, 255 if dtype is torch.uint8 else -3], dtype=dtype).reshape(5, 1).expand(5, 3)
    assert torch.equal(nonzero(t), t != 0)
    assert torch.equal(zero(t), t == 0)


def test_a_bool_mask_is_a_new_tensor():
    t = torch.tensor([True, False])
    got = nonzero(t)
    got[1] = True
    assert t.tolist() == [True, False]
    assert zero(t).tolist() == [False, True]
