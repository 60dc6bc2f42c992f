"""cli package."""

__all__: list[str] = []
