"""Data: cards, the dataset loaders, DICOM and de-identification, image folders, ingest, downloads, pools, the
input path, preprocessing, augmentation, the corruption suite, mosaics, unlabelled subsets, review logs.
Imports core only.

``workbench.data`` held the dataset loaders before the package had layers; reading a name that the layer
does not define (``data.load_dataset``, ``data.DATA_DIR``) gives ``workbench.data.loaders``' value, so that
code keeps working. To patch one, patch ``workbench.data.loaders``.
"""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")
    import importlib
    loaders = importlib.import_module(f"{__name__}.loaders")
    if name == "loaders":
        return loaders
    try:
        return getattr(loaders, name)
    except AttributeError:
        raise AttributeError(f"module 'workbench.data' has no attribute {name!r}") from None
