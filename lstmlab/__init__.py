"""lstmlab: a config-driven lab for LSTM experiments."""

__version__ = "0.1.0"
