"""One router per resource: classify, generate, tuners, health (with metrics)."""
