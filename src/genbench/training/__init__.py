"""Lightning pieces shared by every family: budgets, run records, sample grids, atomic checkpoints."""
