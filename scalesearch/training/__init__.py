"""Layer 5: training one proxy: the loop, optimizer and schedule, the memory layout."""
