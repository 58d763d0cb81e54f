"""Losses for the gradcheck sample: a custom autograd.Function whose backward has the wrong sign,
beside its correct twin, and losses with kinks (non-differentiable points) that must not flap.

The wrong-sign backward gives a gradient that is connected, finite and nonzero everywhere, so the
connectivity audit passes it; only comparing with finite differences (`gradcheck: true`) finds it.
"""

import torch


class WrongSignSquare(torch.autograd.Function):
    """x * x with a hand-written backward that gets the sign wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return -2 * x * grad_output  # wrong: d(x^2)/dx is +2x


class Square(torch.autograd.Function):
    """x * x with a correct hand-written backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


def wrong_sign_mse(predictions, targets):
    return WrongSignSquare.apply(predictions - targets).mean()


def custom_mse(predictions, targets):
    return Square.apply(predictions - targets).mean()


def leaky_relu_loss(activations):
    # A hand-written leaky ReLU: its kink at 0 is exactly where `init: zeros` puts every input.
    return torch.where(activations > 0, activations, 0.1 * activations).mean()


def max_of_rows(scores):
    # amax splits the gradient evenly between tied maxima; finite differences at a tie do not.
    return scores.amax(dim=1).sum()


def l1_loss(predictions, targets):
    return (predictions - targets).abs().mean()
