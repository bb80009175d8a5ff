"""lstmlab: a config-driven lab for LSTM experiments."""

__version__ = "0.1.0"  # the only copy: pyproject.toml reads it ([tool.setuptools.dynamic])
