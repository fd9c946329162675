"""Built-in datasets, exported to disk in the same layouts users bring (no download needed)."""
