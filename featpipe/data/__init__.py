"""The data layer: sources -> manifest (+ rejects, duplicates) -> leakage-free splits."""
