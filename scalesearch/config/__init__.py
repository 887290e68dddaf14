"""Layer 3: a search space (YAML), the proxy recipe and a search's settings."""
