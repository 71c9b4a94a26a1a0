"""The benchmark (`cli.py bench`): orders through the REST API against the same shape on
bare Temporal (run.py), its phases (phases.py), measurements (measure.py), the bare
Temporal workers (baseline.py, run as `python -m devstack.bench.baseline`) and the soak
run (soak.py)."""
