"""Ray Tune sweeps over memory settings, and the reports (tables, plots) built from their results."""
