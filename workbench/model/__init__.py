"""Networks and what runs them: layers, models, prediction, explanations, loading a run, embeddings and
neighbours, the label audit, active learning, test-time adaptation, robustness. Imports core, data, stats.
"""
