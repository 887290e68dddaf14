"""Layer 9: the search: proposals in rounds, their state, Tune adapters, the confirm stage, the finish."""
