"""The chaos run (`cli.py chaos`): orders under faults while processes die (run.py), the
fault plan and how each fault is inflicted (faults.py), the adversarial order mix
(adversarial.py), what the run learns of its orders (facts.py, with the providers' ledgers
read directly by ledgers.py), the invariants (checks.py) and the verdict (report.py)."""
