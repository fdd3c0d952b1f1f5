"""Gated training and deployment of a scikit-learn model with MLflow."""
