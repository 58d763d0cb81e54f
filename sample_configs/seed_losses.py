"""The three custom losses of the article "Why am I getting a 'No Gradients' error for my custom loss?",
as the article wrote them, each beside its correct twin, plus a real version-counter conflict.

What torch 2.13 really does (the audit's expected results) differs from what the article claims:
example 1 gives column 0 a gradient and column 1 exactly zero (partial, not None); example 2 fails
in the forward pass (mean() of a Long tensor); example 3's in-place mul_ on a clone is fine.
"""

import torch


def custom_loss_example_1(predictions, targets):
    component_a = predictions[:, 0]
    component_b = predictions[:, 1]

    # Incorrectly detach component_b
    component_b_detached = component_b.detach()

    ratio = component_a / component_b_detached
    loss = torch.mean((ratio - targets) ** 2)
    return loss


def custom_loss_example_1_fixed(predictions, targets):
    component_a = predictions[:, 0]
    component_b = predictions[:, 1]
    ratio = component_a / component_b
    loss = torch.mean((ratio - targets) ** 2)
    return loss


def custom_loss_example_2(predictions, targets):
    # Let's assume targets are integer class labels for classification
    predicted_class = torch.argmax(predictions, dim=1)

    # Incorrectly use list indexing
    loss_values = []
    for i in range(len(predicted_class)):
        if predicted_class[i] != targets[i]:
            loss_values.append((predicted_class[i] - targets[i]) ** 2)
    loss = torch.mean(torch.tensor(loss_values))
    return loss


def custom_loss_example_2_fixed(predictions, targets):
    return torch.nn.functional.cross_entropy(predictions, targets)


def custom_loss_example_3(predictions, targets):
    scaled_predictions = predictions.clone()

    # The article calls this in-place modification incorrect; on a clone it is fine.
    scaled_predictions.mul_(2.0)

    loss = torch.mean((scaled_predictions - targets) ** 2)
    return loss


def custom_loss_example_3_fixed(predictions, targets):
    scaled_predictions = predictions * 2.0
    loss = torch.mean((scaled_predictions - targets) ** 2)
    return loss


def sigmoid_inplace_conflict(predictions, targets):
    probabilities = torch.sigmoid(predictions)
    # sigmoid saved its output for backward; scaling it in place bumps its version counter.
    probabilities.mul_(2.0)
    loss = torch.mean((probabilities - targets) ** 2)
    return loss
