"""Models: the naming grammar, the base model, directories and their checks, loading, lazy tensors, whether two models
can be combined weight by weight, chat and batched generation."""
