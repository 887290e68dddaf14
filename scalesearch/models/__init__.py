"""Layer 2: plain network specs (`spec`), the families that build them, and measuring their cost."""
