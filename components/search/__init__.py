"""Merge-recipe search: Optuna over merge method, density, λ, layer-swap depth, realign and prune strength."""
