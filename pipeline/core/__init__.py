"""Pure logic: params, data, training, the release ledger and keys; no MLflow, no subprocess."""
