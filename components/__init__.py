"""The pipeline's stages as plain Python: typed configs, input paths in, output paths and metrics out.

Nothing in this package imports Prefect. MLflow is imported by `components.tracking`, which wraps stages without
changing what they compute, and by `components.registry`, whose stages register models in MLflow's registry.
docs/architecture.md says which package may import which; `make lint` checks it.
"""
