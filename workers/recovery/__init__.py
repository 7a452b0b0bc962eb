"""Getting work back: dead letters, replays, stuck events, retention."""
