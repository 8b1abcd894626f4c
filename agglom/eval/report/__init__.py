"""The evaluation report: its JSON schema and validation (:mod:`agglom.eval.report.schema`), its Markdown
(:mod:`agglom.eval.report.markdown`), writing it with the prediction files and figures
(:mod:`agglom.eval.report.write`) and the figures themselves (:mod:`agglom.eval.report.plots`). Each section's part
is validated and rendered by the section itself (:mod:`agglom.eval.sections`)."""
