"""Speed and memory figures, each as a ratio against a baseline measured in the same run.

`python -m benchmarks [NAME ...] [--profile smol]`. Absolute seconds depend on the machine; the ratio
to a baseline that does the unavoidable part of the same work (reading and writing the same bytes,
say) is what a change to the code moves. Tests never assert timings; these figures go in the docs.
"""
