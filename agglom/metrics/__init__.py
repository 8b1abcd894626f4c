"""The statistics every evaluation shares, on the ground floor (numpy, scipy, scikit-learn and fairlearn only).

- :mod:`~agglom.metrics.values`: how a reported number is written (``{value, ci}``, the one estimate type);
- :mod:`~agglom.metrics.bootstrap`: the one stratified bootstrap, clustered by patient when samples name one;
- :mod:`~agglom.metrics.intervals`: BCa intervals that contain their own estimate;
- :mod:`~agglom.metrics.group_stats`, :mod:`~agglom.metrics.group_means`, :mod:`~agglom.metrics.group_auc`:
  per-group AUC, calibration, rates, gaps and means; :mod:`~agglom.metrics.calibration`,
  :mod:`~agglom.metrics.thresholds`, :mod:`~agglom.metrics.pareto`;
- :mod:`~agglom.metrics.probe`: the linear probe on frozen features (evaluation and the teacher audit of
  :mod:`agglom.distill.audit` fit the same one) and the label-efficiency protocol.

Evaluation, fine-tuning and export import them from here, never from ``agglom.eval``.
"""
