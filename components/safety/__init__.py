"""Safety: refusal detection and harmful score (more stages arrive with issue 6: SOMF realignment, Antidote pruning)."""
