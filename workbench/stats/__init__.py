"""Numbers only (numpy, scipy, scikit-learn): metrics and thresholds, calibration, the shift check, the
certification of auto-accept. Imports core and data.
"""
