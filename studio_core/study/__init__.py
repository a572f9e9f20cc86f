"""Studies of many runs: sweeps, Pareto fronts, cost estimates, and the service the UI and CLI call."""
