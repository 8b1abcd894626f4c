"""The dense section (``eval.dense=true``): ``dense.py`` the dense probe and Dice fairness statistics, ``run.py`` the
report part and ``dense_predictions.csv``, ``markdown.py`` its Markdown, ``verdict.py`` the over-seeds Dice verdict,
``section.py`` the :class:`agglom.eval.section.Section`."""
