"""Edit sessions: version trees of a clip (store interface, SQLite and Redis stores, the edit service)."""
