"""agglom: distil several frozen foundation models into one timm student, with subgroup parity."""
__version__ = "0.1.0"
