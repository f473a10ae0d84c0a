"""Mix synthetic with real labelled data at set proportions and label budgets."""
