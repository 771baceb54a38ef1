"""Defaults of the deployments, kept free of imports so the command line can show them without loading Prefect."""

DEFAULT_POOL = "local-process"
DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00 UTC
