"""Running things: executing notebooks with papermill, the run cache, sweeps on Dask, the command line.
The top layer.
"""
