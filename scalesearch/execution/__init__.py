"""Layer 7: where and how a trial runs: the runner (one job -> outcome) and the local Ray or a cluster."""
