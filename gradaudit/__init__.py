"""gradaudit: find the line that cuts the gradient in a loss function, before training starts."""

__version__ = "0.1.0"
