"""The resolution section (``eval.resolutions=[...]``): ``resolution.py`` the curves' rules, Markdown and figure,
``run.py`` the pass at every size, ``section.py`` the :class:`agglom.eval.section.Section`."""
