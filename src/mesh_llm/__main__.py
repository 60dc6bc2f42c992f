"""``python -m mesh_llm`` runs the CLI."""

from mesh_llm.cli import main

raise SystemExit(main())
