"""The stages the notebooks run (explore, pretrain, train, evaluate, annotate), what they share
(semi-supervised comparison, agreement, report). Imports core, data, stats, model.
"""
