"""admf-dask: out-of-core backtesting and parameter sweeps on Dask."""

__version__ = "0.2.2"
