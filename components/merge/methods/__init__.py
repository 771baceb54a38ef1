"""This project's merge methods, one module each, each declaring a `METHOD` that components/merge/registry.py registers.

The pure tensor functions are re-exported here, so `methods.ties(...)` reads as the paper's formula.
"""

from components.merge.methods.layer_swap import layer_swap, layer_swap_share
from components.merge.methods.pcb import pcb, pcb_scores
from components.merge.methods.scaling import lines_factor
from components.merge.methods.task_arithmetic import task_arithmetic, task_vectors
from components.merge.methods.ties import elect_sign, magnitude_trim, ties

__all__ = [
    "elect_sign",
    "layer_swap",
    "layer_swap_share",
    "lines_factor",
    "magnitude_trim",
    "pcb",
    "pcb_scores",
    "task_arithmetic",
    "task_vectors",
    "ties",
]
