"""Built-in teacher families (each module registers itself); heavy libraries are imported inside builders."""
