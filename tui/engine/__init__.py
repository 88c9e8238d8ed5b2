"""Provides the engine: worker processes, the broker pipeline, the headless runner, session logs, pacing; no Textual."""
