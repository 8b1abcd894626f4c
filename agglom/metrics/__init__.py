"""Statistics shared by every evaluation: one stratified (patient-clustered) bootstrap and its BCa intervals.

Kept below the data and evaluation floors (numpy and scipy only) so that the per-group metrics, the paired
comparisons, the verdicts, Dice and fidelity all draw their intervals from :mod:`agglom.metrics.bootstrap`.
"""
