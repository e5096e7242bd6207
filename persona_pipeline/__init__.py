"""persona-pipeline: persona specs to trained, steerable, evaluated persona models."""

__version__ = "0.1.0"
