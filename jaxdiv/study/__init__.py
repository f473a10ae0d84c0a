"""The study: the diversity x proportion x budget grid, run end to end."""
