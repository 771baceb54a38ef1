"""Orchestration: the command line, the stage table and how a stage runs, the two Prefect flows and what they share,
their deployments, and the local stack.

No model math lives here: every stage is a function in `components`, called the same way by the CLI,
by `dvc repro` (through the CLI) and by the tests.
"""
