"""Deprecated: ``workbench.features`` was split by concern (it held seven). Importing it still works and says where
each name went; nothing in the package imports it.

- embeddings and their cache in the run: ``workbench.embeddings`` (split_features, pool_features, embed_images, …)
- the kNN second opinion, the OOD score, near-duplicates, the feature baselines: ``workbench.neighbours``
- the embedding map (projection, figure, the run's cached map): ``workbench.maps``; the interactive map and
  ``show_map`` / ``explore_map``: ``workbench.widgets``
- the annotate stage's use of them (PoolFeatures, ``annotate_pool`` → ``annotate.features_of``, ood_gallery,
  agreement_table): ``workbench.annotate``
"""

from __future__ import annotations

import warnings

from .stages.annotate import PoolFeatures, agreement_table, features_of as annotate_pool, ood_gallery  # noqa: F401
from .model.embeddings import (EMBED_CHUNK, EMBED_LAYER, FEATURES_DIR, FEATURES_VERSION, Features,  # noqa: F401
                         cache_key, cache_path, embed_images, embed_stream, embedding_layer, extractor,
                         pool_features, pool_source_id, split_features, split_id)
from .ui.maps import (MAX_CATEGORIES, MAX_THUMBNAILS, MAX_UMAP_FIT, UMAP_FROM, MapData, annotate_map,  # noqa: F401
                   map_data, map_figure, place, project, run_map, run_projection, thumbnail_png)
from .model.neighbours import (KNN_K, NEAR_DUPLICATE, OOD_QUANTILE, PROBE_C, Index, OODScorer, baselines,  # noqa: F401
                         baselines_table, knn_predict, knn_vote, linear_probe, near_duplicate_pairs)
from .ui.widgets import EmbeddingMap, explore_map, show_map  # noqa: F401

warnings.warn("workbench.features is split into workbench.embeddings, workbench.neighbours, workbench.maps (and "
              "the annotate and widgets modules): import from those; this alias will go", FutureWarning, stacklevel=2)
