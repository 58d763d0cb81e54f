"""The version of gradaudit, in a module of its own: any module reads it without the package face."""

__version__ = "0.1.0"
