"""Provides the pure model: observations, ledger, state, scenarios; stdlib and workers.protocol/settings only."""
