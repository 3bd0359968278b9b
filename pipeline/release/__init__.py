"""Release steps: infra-validate a candidate in a real server, promote it by label, smoke-test it."""
