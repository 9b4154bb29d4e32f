"""Registered workloads; ``get_workload(name)`` builds nothing until ``build`` is called."""
