"""optarena: the optimization layer of deep-learning training, and a fair arena for it."""

__version__ = "0.1.0"
