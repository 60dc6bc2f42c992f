"""network package."""

__all__: list[str] = []
