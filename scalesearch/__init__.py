"""scalesearch: find compound-scaling coefficients for neural network families on your own data.

Importing the package is cheap: torch, ray, optuna and matplotlib are imported by the modules
that need them, so `scalesearch --help` answers at once.
"""

__version__ = "0.1.0"
