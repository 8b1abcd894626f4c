"""`agglom monitor`: an exported student watched after deployment. Batches of shards arriving over time are compared
with the split the model was validated on, per group and overall — embedding drift, score shift, group proportions
and, where labels arrive, AUC — with a report and an alarm (:mod:`agglom.monitor.run`)."""
