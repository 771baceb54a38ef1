"""Evaluation: utility (domain multiple choice, math exact match, perplexity) and safety (harmful score, over-refusal)."""
