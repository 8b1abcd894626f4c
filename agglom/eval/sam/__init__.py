"""The SAM section (``eval.sam_prompts=true``, report key ``sam_prompts``): ``run.py`` the plan and the prompted
decoding pass, ``report.py`` its schema check, Markdown and console lines, ``section.py`` the
:class:`agglom.eval.section.Section`."""
