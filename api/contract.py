"""Names shared by the training side (which writes them) and the service (which reads them)."""

FEATURE_SCHEMA = "feature_schema.json"
SMOKE_EXAMPLES = "smoke/examples.json"
METRIC_TAG_PREFIX = "metric."
