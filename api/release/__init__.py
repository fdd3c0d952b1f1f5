"""What the pipeline writes and the API reads: tag contract, verdicts, safe loading, probe, redaction, release check."""
