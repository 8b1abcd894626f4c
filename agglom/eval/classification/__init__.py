"""The classification section: the linear-probe protocol on every evaluated model (``models`` in the report) and the
paired comparison with a reference evaluation (``comparison``). ``section.py`` implements
:class:`agglom.eval.section.Section`; ``protocol.py`` probes one model, ``compare.py`` pairs two evaluations,
``markdown.py`` renders both parts. The linear probe itself is :mod:`agglom.metrics.probe` (shared with fidelity and the
teacher audit)."""
