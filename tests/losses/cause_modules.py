"""nn.Module losses whose parameters lose their gradient, each beside a correct twin."""

import torch


class FrozenScale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))

    def forward(self, x, t):
        scaled = x * self.scale.detach()  # CULPRIT: FrozenScale
        return ((scaled - t) ** 2).mean()


class FrozenScaleTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.register_buffer("offset", torch.zeros(4))  # a constant: no gradient wanted

    def forward(self, x, t):
        return ((x * self.scale + self.offset - t) ** 2).mean()


class UnusedBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))
        self.bias = torch.nn.Parameter(torch.zeros(4))  # CULPRIT: UnusedBias

    def forward(self, x, t):
        return ((x * self.weight - t) ** 2).mean()


class UnusedBiasTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))
        self.bias = torch.nn.Parameter(torch.zeros(4), requires_grad=False)  # frozen on purpose

    def forward(self, x, t):
        return ((x * self.weight - t) ** 2).mean()


class DataWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x, t):
        w = self.weight.data  # CULPRIT: DataWeight
        return ((x * w - t) ** 2).mean()


class DataWeightTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x, t):
        with torch.no_grad():
            self.weight.clamp_(min=0.0)  # a projection step, as optimisers do
        return ((x * self.weight - t) ** 2).mean()
