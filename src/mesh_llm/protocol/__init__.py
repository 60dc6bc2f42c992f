"""protocol package."""

__all__: list[str] = []
