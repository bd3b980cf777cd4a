"""Interactive views: the ipywidgets (review, explore, embedding map) and the embedding map's data.
Imports every layer below it.
"""
