"""Gates and the MLflow model registry: which candidate may ship, and the aliases that say which one does."""
