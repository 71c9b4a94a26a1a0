"""The one service layer the front ends (API, CLI, console) call: order commands, status
reads and statistics."""
