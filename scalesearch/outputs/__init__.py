"""Layer 6: the run folder and what is made from it: rows, views, plots, the family table, exports, the report."""
