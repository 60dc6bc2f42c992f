"""mesh-llm: pool spare GPU/CPU capacity across machines behind one OpenAI-compatible API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
