"""The pipeline's stages as plain Python: typed configs, input paths in, output paths and metrics out.

Nothing in this package imports Prefect. MLflow is imported only by `components.tracking`, which wraps
stages without changing what they compute.
"""
