"""The single place the package version lives; imported by `dstack --version` without anything else."""

__version__ = "0.1.0"
