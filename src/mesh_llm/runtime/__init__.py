"""runtime package."""

__all__: list[str] = []
