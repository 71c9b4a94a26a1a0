"""The chaos run (`cli.py chaos`): orders under faults while processes die (run.py), the
fault plan and how each fault is inflicted (faults.py), the adversarial order mix
(adversarial.py), the providers' ledgers read directly (ledgers.py) and the invariants
checked at the end (checks.py)."""
