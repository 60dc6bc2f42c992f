"""Management API on :3131 (status, events, runtime) and the console page."""

from mesh_llm.api.hub import ChangeHub
from mesh_llm.api.server import ManagementServer

__all__ = ["ChangeHub", "ManagementServer"]
