"""The Base78 table, sharding, mirrors: data operations above the engine core."""
