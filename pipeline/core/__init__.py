"""Shared foundations: the config, errors, atomic artifacts, the lineage log and the model repository."""
