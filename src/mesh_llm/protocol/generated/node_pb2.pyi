from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    NODE_ROLE_WORKER: _ClassVar[NodeRole]
    NODE_ROLE_HOST: _ClassVar[NodeRole]
    NODE_ROLE_CLIENT: _ClassVar[NodeRole]

class ModelSourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_SOURCE_KIND_UNSPECIFIED: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_CATALOG: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_HUGGING_FACE: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_LOCAL_GGUF: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_DIRECT_URL: _ClassVar[ModelSourceKind]
    MODEL_SOURCE_KIND_UNKNOWN: _ClassVar[ModelSourceKind]

class CapabilityLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPABILITY_LEVEL_UNSPECIFIED: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_NONE: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_LIKELY: _ClassVar[CapabilityLevel]
    CAPABILITY_LEVEL_SUPPORTED: _ClassVar[CapabilityLevel]
NODE_ROLE_UNSPECIFIED: NodeRole
NODE_ROLE_WORKER: NodeRole
NODE_ROLE_HOST: NodeRole
NODE_ROLE_CLIENT: NodeRole
MODEL_SOURCE_KIND_UNSPECIFIED: ModelSourceKind
MODEL_SOURCE_KIND_CATALOG: ModelSourceKind
MODEL_SOURCE_KIND_HUGGING_FACE: ModelSourceKind
MODEL_SOURCE_KIND_LOCAL_GGUF: ModelSourceKind
MODEL_SOURCE_KIND_DIRECT_URL: ModelSourceKind
MODEL_SOURCE_KIND_UNKNOWN: ModelSourceKind
CAPABILITY_LEVEL_UNSPECIFIED: CapabilityLevel
CAPABILITY_LEVEL_NONE: CapabilityLevel
CAPABILITY_LEVEL_LIKELY: CapabilityLevel
CAPABILITY_LEVEL_SUPPORTED: CapabilityLevel

class GossipFrame(_message.Message):
    __slots__ = ("gen", "peers", "sender_id")
    GEN_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    gen: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerAnnouncement]
    sender_id: bytes
    def __init__(self, gen: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerAnnouncement, _Mapping]]] = ..., sender_id: _Optional[bytes] = ...) -> None: ...

class PeerAnnouncement(_message.Message):
    __slots__ = ("endpoint_id", "role", "http_port", "version", "gpu_name", "hostname", "is_soc", "gpu_vram", "available_models", "serving_models", "requested_models", "available_model_metadata", "experts_summary", "rtt_ms", "catalog_models", "vram_bytes", "model_source", "primary_serving", "mesh_id", "demand", "available_model_sizes", "serialized_addr", "hosted_models", "hosted_models_known", "served_model_descriptors", "served_model_identities", "served_model_runtime", "llama_build", "rpc_ready")
    class AvailableModelSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IS_SOC_FIELD_NUMBER: _ClassVar[int]
    GPU_VRAM_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODELS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODEL_METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_MODELS_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_SERVING_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MODEL_SIZES_FIELD_NUMBER: _ClassVar[int]
    SERIALIZED_ADDR_FIELD_NUMBER: _ClassVar[int]
    HOSTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    HOSTED_MODELS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LLAMA_BUILD_FIELD_NUMBER: _ClassVar[int]
    RPC_READY_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: bytes
    role: NodeRole
    http_port: int
    version: str
    gpu_name: str
    hostname: str
    is_soc: bool
    gpu_vram: str
    available_models: _containers.RepeatedScalarFieldContainer[str]
    serving_models: _containers.RepeatedScalarFieldContainer[str]
    requested_models: _containers.RepeatedScalarFieldContainer[str]
    available_model_metadata: _containers.RepeatedCompositeFieldContainer[CompactModelMetadata]
    experts_summary: ExpertsSummary
    rtt_ms: int
    catalog_models: _containers.RepeatedScalarFieldContainer[str]
    vram_bytes: int
    model_source: str
    primary_serving: str
    mesh_id: str
    demand: _containers.RepeatedCompositeFieldContainer[ModelDemandEntry]
    available_model_sizes: _containers.ScalarMap[str, int]
    serialized_addr: bytes
    hosted_models: _containers.RepeatedScalarFieldContainer[str]
    hosted_models_known: bool
    served_model_descriptors: _containers.RepeatedCompositeFieldContainer[ServedModelDescriptor]
    served_model_identities: _containers.RepeatedCompositeFieldContainer[ServedModelIdentity]
    served_model_runtime: _containers.RepeatedCompositeFieldContainer[ModelRuntimeDescriptor]
    llama_build: str
    rpc_ready: bool
    def __init__(self, endpoint_id: _Optional[bytes] = ..., role: _Optional[_Union[NodeRole, str]] = ..., http_port: _Optional[int] = ..., version: _Optional[str] = ..., gpu_name: _Optional[str] = ..., hostname: _Optional[str] = ..., is_soc: _Optional[bool] = ..., gpu_vram: _Optional[str] = ..., available_models: _Optional[_Iterable[str]] = ..., serving_models: _Optional[_Iterable[str]] = ..., requested_models: _Optional[_Iterable[str]] = ..., available_model_metadata: _Optional[_Iterable[_Union[CompactModelMetadata, _Mapping]]] = ..., experts_summary: _Optional[_Union[ExpertsSummary, _Mapping]] = ..., rtt_ms: _Optional[int] = ..., catalog_models: _Optional[_Iterable[str]] = ..., vram_bytes: _Optional[int] = ..., model_source: _Optional[str] = ..., primary_serving: _Optional[str] = ..., mesh_id: _Optional[str] = ..., demand: _Optional[_Iterable[_Union[ModelDemandEntry, _Mapping]]] = ..., available_model_sizes: _Optional[_Mapping[str, int]] = ..., serialized_addr: _Optional[bytes] = ..., hosted_models: _Optional[_Iterable[str]] = ..., hosted_models_known: _Optional[bool] = ..., served_model_descriptors: _Optional[_Iterable[_Union[ServedModelDescriptor, _Mapping]]] = ..., served_model_identities: _Optional[_Iterable[_Union[ServedModelIdentity, _Mapping]]] = ..., served_model_runtime: _Optional[_Iterable[_Union[ModelRuntimeDescriptor, _Mapping]]] = ..., llama_build: _Optional[str] = ..., rpc_ready: _Optional[bool] = ...) -> None: ...

class ModelDemandEntry(_message.Message):
    __slots__ = ("model_name", "last_active", "request_count")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    last_active: int
    request_count: int
    def __init__(self, model_name: _Optional[str] = ..., last_active: _Optional[int] = ..., request_count: _Optional[int] = ...) -> None: ...

class ExpertsSummary(_message.Message):
    __slots__ = ("total_experts", "expert_count_used", "top_expert_ids")
    TOTAL_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_COUNT_USED_FIELD_NUMBER: _ClassVar[int]
    TOP_EXPERT_IDS_FIELD_NUMBER: _ClassVar[int]
    total_experts: int
    expert_count_used: int
    top_expert_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, total_experts: _Optional[int] = ..., expert_count_used: _Optional[int] = ..., top_expert_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ServedModelDescriptor(_message.Message):
    __slots__ = ("identity", "capabilities", "topology")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    identity: ServedModelIdentity
    capabilities: ModelCapabilities
    topology: ModelTopology
    def __init__(self, identity: _Optional[_Union[ServedModelIdentity, _Mapping]] = ..., capabilities: _Optional[_Union[ModelCapabilities, _Mapping]] = ..., topology: _Optional[_Union[ModelTopology, _Mapping]] = ...) -> None: ...

class ServedModelIdentity(_message.Message):
    __slots__ = ("model_name", "is_primary", "source_kind", "canonical_ref", "repository", "revision", "artifact", "local_file_name", "identity_hash")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IS_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_REF_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_HASH_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    is_primary: bool
    source_kind: ModelSourceKind
    canonical_ref: str
    repository: str
    revision: str
    artifact: str
    local_file_name: str
    identity_hash: str
    def __init__(self, model_name: _Optional[str] = ..., is_primary: _Optional[bool] = ..., source_kind: _Optional[_Union[ModelSourceKind, str]] = ..., canonical_ref: _Optional[str] = ..., repository: _Optional[str] = ..., revision: _Optional[str] = ..., artifact: _Optional[str] = ..., local_file_name: _Optional[str] = ..., identity_hash: _Optional[str] = ...) -> None: ...

class ModelCapabilities(_message.Message):
    __slots__ = ("vision", "reasoning", "tool_use", "moe", "multimodal", "audio")
    VISION_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_USE_FIELD_NUMBER: _ClassVar[int]
    MOE_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    vision: CapabilityLevel
    reasoning: CapabilityLevel
    tool_use: CapabilityLevel
    moe: bool
    multimodal: bool
    audio: CapabilityLevel
    def __init__(self, vision: _Optional[_Union[CapabilityLevel, str]] = ..., reasoning: _Optional[_Union[CapabilityLevel, str]] = ..., tool_use: _Optional[_Union[CapabilityLevel, str]] = ..., moe: _Optional[bool] = ..., multimodal: _Optional[bool] = ..., audio: _Optional[_Union[CapabilityLevel, str]] = ...) -> None: ...

class ModelTopology(_message.Message):
    __slots__ = ("moe",)
    MOE_FIELD_NUMBER: _ClassVar[int]
    moe: ModelMoeInfo
    def __init__(self, moe: _Optional[_Union[ModelMoeInfo, _Mapping]] = ...) -> None: ...

class ModelMoeInfo(_message.Message):
    __slots__ = ("expert_count", "used_expert_count", "min_experts_per_node", "source")
    EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    USED_EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_EXPERTS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    expert_count: int
    used_expert_count: int
    min_experts_per_node: int
    source: str
    def __init__(self, expert_count: _Optional[int] = ..., used_expert_count: _Optional[int] = ..., min_experts_per_node: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ModelRuntimeDescriptor(_message.Message):
    __slots__ = ("model_name", "identity_hash", "context_length", "ready")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    identity_hash: str
    context_length: int
    ready: bool
    def __init__(self, model_name: _Optional[str] = ..., identity_hash: _Optional[str] = ..., context_length: _Optional[int] = ..., ready: _Optional[bool] = ...) -> None: ...

class CompactModelMetadata(_message.Message):
    __slots__ = ("model_key", "context_length", "vocab_size", "embedding_size", "head_count", "layer_count", "feed_forward_length", "key_length", "value_length", "architecture", "tokenizer_model_name", "special_tokens", "rope_scale", "rope_freq_base", "is_moe", "expert_count", "used_expert_count", "quantization_type")
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEED_FORWARD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KEY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VALUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROPE_SCALE_FIELD_NUMBER: _ClassVar[int]
    ROPE_FREQ_BASE_FIELD_NUMBER: _ClassVar[int]
    IS_MOE_FIELD_NUMBER: _ClassVar[int]
    EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    USED_EXPERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    context_length: int
    vocab_size: int
    embedding_size: int
    head_count: int
    layer_count: int
    feed_forward_length: int
    key_length: int
    value_length: int
    architecture: str
    tokenizer_model_name: str
    special_tokens: _containers.RepeatedCompositeFieldContainer[SpecialToken]
    rope_scale: float
    rope_freq_base: float
    is_moe: bool
    expert_count: int
    used_expert_count: int
    quantization_type: str
    def __init__(self, model_key: _Optional[str] = ..., context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., embedding_size: _Optional[int] = ..., head_count: _Optional[int] = ..., layer_count: _Optional[int] = ..., feed_forward_length: _Optional[int] = ..., key_length: _Optional[int] = ..., value_length: _Optional[int] = ..., architecture: _Optional[str] = ..., tokenizer_model_name: _Optional[str] = ..., special_tokens: _Optional[_Iterable[_Union[SpecialToken, _Mapping]]] = ..., rope_scale: _Optional[float] = ..., rope_freq_base: _Optional[float] = ..., is_moe: _Optional[bool] = ..., expert_count: _Optional[int] = ..., used_expert_count: _Optional[int] = ..., quantization_type: _Optional[str] = ...) -> None: ...

class SpecialToken(_message.Message):
    __slots__ = ("name", "token_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    token_id: int
    def __init__(self, name: _Optional[str] = ..., token_id: _Optional[int] = ...) -> None: ...

class TunnelMap(_message.Message):
    __slots__ = ("owner_peer_id", "entries")
    OWNER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    owner_peer_id: bytes
    entries: _containers.RepeatedCompositeFieldContainer[TunnelEntry]
    def __init__(self, owner_peer_id: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[TunnelEntry, _Mapping]]] = ...) -> None: ...

class TunnelEntry(_message.Message):
    __slots__ = ("target_peer_id", "relay_peer_id", "tunnel_port")
    TARGET_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    RELAY_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_PORT_FIELD_NUMBER: _ClassVar[int]
    target_peer_id: bytes
    relay_peer_id: bytes
    tunnel_port: int
    def __init__(self, target_peer_id: _Optional[bytes] = ..., relay_peer_id: _Optional[bytes] = ..., tunnel_port: _Optional[int] = ...) -> None: ...

class RouteTableRequest(_message.Message):
    __slots__ = ("requester_id", "gen")
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    requester_id: bytes
    gen: int
    def __init__(self, requester_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("entries", "mesh_id", "gen")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RouteEntry]
    mesh_id: str
    gen: int
    def __init__(self, entries: _Optional[_Iterable[_Union[RouteEntry, _Mapping]]] = ..., mesh_id: _Optional[str] = ..., gen: _Optional[int] = ...) -> None: ...

class RouteEntry(_message.Message):
    __slots__ = ("endpoint_id", "model")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: bytes
    model: str
    def __init__(self, endpoint_id: _Optional[bytes] = ..., model: _Optional[str] = ...) -> None: ...

class PeerDown(_message.Message):
    __slots__ = ("peer_id", "gen")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    gen: int
    def __init__(self, peer_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...

class PeerLeaving(_message.Message):
    __slots__ = ("peer_id", "gen")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    gen: int
    def __init__(self, peer_id: _Optional[bytes] = ..., gen: _Optional[int] = ...) -> None: ...
