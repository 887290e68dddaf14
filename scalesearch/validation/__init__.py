"""Layer 8: checking a found rule against single-dimension scaling across phi."""
