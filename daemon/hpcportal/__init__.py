"""hpcportal: the backend daemon of an HPC cluster's web portal."""

__version__ = "0.1.0"
