"""The MLflow adapters: the tracking connection, runs, the model registry, the release lock and status."""
