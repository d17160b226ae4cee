"""Stage 0, configuration: the typed schema (its defaults are the default recipe), loading, and the shipped presets."""
