"""The training loop and what it needs: optimiser groups, schedule, checkpoints, logging, EMA."""
