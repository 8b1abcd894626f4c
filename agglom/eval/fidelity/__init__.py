"""The fidelity section (``eval.fidelity=true``): ``fidelity.py`` the accumulator and the measures (global R²,
cosine, functional), ``markdown.py`` its Markdown, ``section.py`` the :class:`agglom.eval.section.Section` and the
report part."""
