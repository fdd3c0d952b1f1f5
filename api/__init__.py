"""The prediction service: its HTTP face at the top (app, settings, model source, limits, metrics)."""
