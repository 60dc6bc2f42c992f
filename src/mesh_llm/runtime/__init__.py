"""Composition root: builds a Node from its parts, startup and shutdown order, signals."""

from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.node import Node

__all__ = ["Node", "NodeConfig"]
