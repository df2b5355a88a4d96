"""The pairs stage (stage.py); the pair rules live with their methods (selfplay/methods/)."""
