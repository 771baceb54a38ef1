"""Model directories: building the base model, and checking that a directory is a usable model."""
