"""The operator CLI (Typer): order commands on the service layer."""
