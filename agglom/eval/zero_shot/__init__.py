"""The zero-shot section (``zero_shot=recipe|FILE``): ``zero_shot.py`` prompts, text-tower scoring and metrics,
``run.py`` the plan and the pass, ``markdown.py`` its Markdown, ``section.py`` the
:class:`agglom.eval.section.Section`."""
