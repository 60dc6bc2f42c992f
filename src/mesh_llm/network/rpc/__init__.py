"""The RPC tunnel (stream 0x02): a host's llama-server to a worker's rpc-server, weights spliced."""

from mesh_llm.network.rpc.tunnel import (
    RpcStream,
    RpcTunnelHost,
    WeightStore,
    WorkerSources,
    serve_rpc_tunnel,
)

__all__ = ["RpcStream", "RpcTunnelHost", "WeightStore", "WorkerSources", "serve_rpc_tunnel"]
