"""Layer 1: dataset specs and decoding, the shared on-disk cache, splits and resized copies, generated sets."""
