"""The bottom layer: errors, paths, the runtime (backend, threads), progress bars, the one folder walker,
task types, parameters, notebook cell lists, run directories, display primitives. Imports no other layer.
"""
