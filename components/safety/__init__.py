"""Safety: the refusal judges and the harmful score, the safety model's data, SOMF and RESTA realignment, Antidote
pruning."""
