from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    BOOL: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
INT32: DType
INT64: DType
BOOL: DType

class TensorSpec(_message.Message):
    __slots__ = ("dtype", "shape")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "padding")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    padding: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., padding: _Optional[bytes] = ...) -> None: ...

class Ints(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class AttrValue(_message.Message):
    __slots__ = ("i", "f", "b", "s", "ints")
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    i: int
    f: float
    b: bool
    s: str
    ints: Ints
    def __init__(self, i: _Optional[int] = ..., f: _Optional[float] = ..., b: _Optional[bool] = ..., s: _Optional[str] = ..., ints: _Optional[_Union[Ints, _Mapping]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "op", "inputs", "attrs")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttrValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttrValue, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    name: str
    op: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    attrs: _containers.MessageMap[str, AttrValue]
    def __init__(self, name: _Optional[str] = ..., op: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., attrs: _Optional[_Mapping[str, AttrValue]] = ...) -> None: ...

class NamedSpec(_message.Message):
    __slots__ = ("name", "spec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: TensorSpec
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[TensorSpec, _Mapping]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("inputs", "params", "constants", "nodes", "loss", "outputs", "batch_reduction")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CONSTANTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[NamedSpec]
    params: _containers.RepeatedCompositeFieldContainer[NamedSpec]
    constants: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    loss: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    batch_reduction: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[NamedSpec, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[NamedSpec, _Mapping]]] = ..., constants: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., loss: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., batch_reduction: _Optional[str] = ...) -> None: ...

class RegisterGraphRequest(_message.Message):
    __slots__ = ("graph",)
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ...) -> None: ...

class RegisterGraphResponse(_message.Message):
    __slots__ = ("graph_id", "num_nodes")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    num_nodes: int
    def __init__(self, graph_id: _Optional[str] = ..., num_nodes: _Optional[int] = ...) -> None: ...

class ComputeHeader(_message.Message):
    __slots__ = ("graph", "graph_id", "session_id", "wrt", "input_grads", "fetch", "shards", "request_id", "placement")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    INPUT_GRADS_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    graph_id: str
    session_id: str
    wrt: _containers.RepeatedScalarFieldContainer[str]
    input_grads: _containers.RepeatedScalarFieldContainer[str]
    fetch: _containers.RepeatedScalarFieldContainer[str]
    shards: int
    request_id: str
    placement: str
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., graph_id: _Optional[str] = ..., session_id: _Optional[str] = ..., wrt: _Optional[_Iterable[str]] = ..., input_grads: _Optional[_Iterable[str]] = ..., fetch: _Optional[_Iterable[str]] = ..., shards: _Optional[int] = ..., request_id: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class ComputeRequest(_message.Message):
    __slots__ = ("header", "params", "batch")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    header: ComputeHeader
    params: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    batch: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, header: _Optional[_Union[ComputeHeader, _Mapping]] = ..., params: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., batch: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("index", "start", "stop", "worker", "node", "pid", "ms", "attempts")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    start: int
    stop: int
    worker: str
    node: str
    pid: int
    ms: float
    attempts: int
    def __init__(self, index: _Optional[int] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., worker: _Optional[str] = ..., node: _Optional[str] = ..., pid: _Optional[int] = ..., ms: _Optional[float] = ..., attempts: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("backend", "shard_count", "shards", "phase_ms", "server_pid", "sharding", "warnings", "estimated_peak_bytes", "estimated_flops", "placement", "estimated_ms")
    class PhaseMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_PID_FIELD_NUMBER: _ClassVar[int]
    SHARDING_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_MS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    shard_count: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    phase_ms: _containers.ScalarMap[str, float]
    server_pid: int
    sharding: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    estimated_peak_bytes: int
    estimated_flops: float
    placement: str
    estimated_ms: float
    def __init__(self, backend: _Optional[str] = ..., shard_count: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., phase_ms: _Optional[_Mapping[str, float]] = ..., server_pid: _Optional[int] = ..., sharding: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., estimated_peak_bytes: _Optional[int] = ..., estimated_flops: _Optional[float] = ..., placement: _Optional[str] = ..., estimated_ms: _Optional[float] = ...) -> None: ...

class ComputeSummary(_message.Message):
    __slots__ = ("loss", "graph_id", "request_id", "info", "session_version")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    SESSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    loss: float
    graph_id: str
    request_id: str
    info: RunInfo
    session_version: int
    def __init__(self, loss: _Optional[float] = ..., graph_id: _Optional[str] = ..., request_id: _Optional[str] = ..., info: _Optional[_Union[RunInfo, _Mapping]] = ..., session_version: _Optional[int] = ...) -> None: ...

class ComputeResponse(_message.Message):
    __slots__ = ("summary", "grads", "input_grads", "outputs")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    INPUT_GRADS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    summary: ComputeSummary
    grads: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    input_grads: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, summary: _Optional[_Union[ComputeSummary, _Mapping]] = ..., grads: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., input_grads: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class SessionHeader(_message.Message):
    __slots__ = ("graph", "graph_id", "session_id")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    graph_id: str
    session_id: str
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., graph_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("header", "params")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    header: SessionHeader
    params: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, header: _Optional[_Union[SessionHeader, _Mapping]] = ..., params: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "graph_id", "version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    graph_id: str
    version: int
    def __init__(self, session_id: _Optional[str] = ..., graph_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ParamsChunk(_message.Message):
    __slots__ = ("info", "params")
    INFO_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    info: SessionInfo
    params: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, info: _Optional[_Union[SessionInfo, _Mapping]] = ..., params: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOpsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttrInfo(_message.Message):
    __slots__ = ("name", "kind", "required", "default", "value_field")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    required: bool
    default: str
    value_field: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., required: _Optional[bool] = ..., default: _Optional[str] = ..., value_field: _Optional[str] = ...) -> None: ...

class OpInfo(_message.Message):
    __slots__ = ("name", "arity", "attrs", "doc", "differentiable", "broadcast")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARITY_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    DIFFERENTIABLE_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    arity: int
    attrs: _containers.RepeatedCompositeFieldContainer[AttrInfo]
    doc: str
    differentiable: _containers.RepeatedScalarFieldContainer[bool]
    broadcast: bool
    def __init__(self, name: _Optional[str] = ..., arity: _Optional[int] = ..., attrs: _Optional[_Iterable[_Union[AttrInfo, _Mapping]]] = ..., doc: _Optional[str] = ..., differentiable: _Optional[_Iterable[bool]] = ..., broadcast: _Optional[bool] = ...) -> None: ...

class ListOpsResponse(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[OpInfo]
    def __init__(self, ops: _Optional[_Iterable[_Union[OpInfo, _Mapping]]] = ...) -> None: ...

class JobHeader(_message.Message):
    __slots__ = ("graph", "graph_id", "optimizer_json", "batch_size", "epochs", "seed", "checkpoint_every", "data_path", "shards", "name", "placement")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    graph_id: str
    optimizer_json: str
    batch_size: int
    epochs: int
    seed: int
    checkpoint_every: int
    data_path: str
    shards: int
    name: str
    placement: str
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., graph_id: _Optional[str] = ..., optimizer_json: _Optional[str] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., seed: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., data_path: _Optional[str] = ..., shards: _Optional[int] = ..., name: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("header", "params", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: JobHeader
    params: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    data: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, header: _Optional[_Union[JobHeader, _Mapping]] = ..., params: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., data: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "state", "step", "total_steps", "epoch", "loss", "error", "graph_id", "name", "placement")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    step: int
    total_steps: int
    epoch: int
    loss: float
    error: str
    graph_id: str
    name: str
    placement: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., error: _Optional[str] = ..., graph_id: _Optional[str] = ..., name: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("step", "epoch", "loss", "examples_per_s", "eta_s", "state", "total_steps", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: int
    loss: float
    examples_per_s: float
    eta_s: float
    state: str
    total_steps: int
    message: str
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., examples_per_s: _Optional[float] = ..., eta_s: _Optional[float] = ..., state: _Optional[str] = ..., total_steps: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_step: int
    def __init__(self, job_id: _Optional[str] = ..., after_step: _Optional[int] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...
