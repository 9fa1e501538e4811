"""mlscale: the production ML lifecycle on one Ray cluster."""

__version__ = "0.1.0"
