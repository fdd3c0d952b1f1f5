"""Gated training and deployment of a scikit-learn model with MLflow: the CLI at the top, its layers in the folders."""
