"""api package."""

__all__: list[str] = []
