"""The one place the version lives; `dstack --version` imports nothing else."""

__version__ = "0.1.0"
