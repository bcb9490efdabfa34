"""The training engine: build a session, the loop, evaluation and a run directory's life cycle. Knows no study."""
