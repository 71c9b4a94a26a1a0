"""The embedded dev stack and the tools that drive the product from outside: supervisor,
backup and restore, chaos runs, benchmark. Never imported by the product (app/)."""
