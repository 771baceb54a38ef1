"""Orchestration: the command line, the stage registry, and (as the flows grow) the Prefect flows.

No model math lives here: every stage is a function in `components`, called the same way by the CLI,
by `dvc repro` (through the CLI) and by the tests.
"""
