"""Command handlers of the mesh-llm CLI, one module per top-level command."""
