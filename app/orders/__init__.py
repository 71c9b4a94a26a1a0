"""The order domain: workflows (the state machine), activities, Temporal messages, input
rules, failure simulation and the external providers (payment gateway, carrier)."""
