"""picolm: a small-language-model lab."""

__version__ = "0.1.0"
