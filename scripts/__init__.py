"""Sweeps, tables, plots and benchmarks run from the command line (``python scripts/NAME.py``)."""
