"""Prefect flows and the command line: thin wiring over components/."""
