"""Model merging: task arithmetic, TIES, PCB, layer swapping and LiNeS here; the rest through mergekit."""
