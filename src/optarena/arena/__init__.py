"""The arena: workloads, one training loop, tuning, a results store, analysis and reports."""
