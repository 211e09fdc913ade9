"""Training stage: MLCS recipe (crab_rt.train)."""
