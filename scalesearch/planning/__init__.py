"""Layer 4: the realizable networks on a budget band, the nearest network, a family calibrated onto its budgets."""
