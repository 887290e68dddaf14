"""Layer 0: errors, the scaling math, atomic files, plain tables and paths. Imports nothing else of scalesearch."""
