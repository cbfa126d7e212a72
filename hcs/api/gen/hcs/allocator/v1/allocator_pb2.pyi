from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssignmentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_STATE_UNSPECIFIED: _ClassVar[AssignmentState]
    ASSIGNMENT_STATE_PENDING: _ClassVar[AssignmentState]
    ASSIGNMENT_STATE_CONFIRMED: _ClassVar[AssignmentState]
ASSIGNMENT_STATE_UNSPECIFIED: AssignmentState
ASSIGNMENT_STATE_PENDING: AssignmentState
ASSIGNMENT_STATE_CONFIRMED: AssignmentState

class PodRef(_message.Message):
    __slots__ = ("uid", "namespace", "name", "creation_time_unix_ms")
    UID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    namespace: str
    name: str
    creation_time_unix_ms: int
    def __init__(self, uid: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., creation_time_unix_ms: _Optional[int] = ...) -> None: ...

class ContainerRequest(_message.Message):
    __slots__ = ("container", "vram_bytes", "tflops_milli", "device_count")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    TFLOPS_MILLI_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    container: str
    vram_bytes: int
    tflops_milli: int
    device_count: int
    def __init__(self, container: _Optional[str] = ..., vram_bytes: _Optional[int] = ..., tflops_milli: _Optional[int] = ..., device_count: _Optional[int] = ...) -> None: ...

class Constraints(_message.Message):
    __slots__ = ("topology_preference", "vendors", "models", "scheduling_policy")
    TOPOLOGY_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    VENDORS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_POLICY_FIELD_NUMBER: _ClassVar[int]
    topology_preference: str
    vendors: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    scheduling_policy: str
    def __init__(self, topology_preference: _Optional[str] = ..., vendors: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., scheduling_policy: _Optional[str] = ...) -> None: ...

class PodRequest(_message.Message):
    __slots__ = ("pod", "containers", "constraints", "cpu_milli", "memory_bytes")
    POD_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLI_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    containers: _containers.RepeatedCompositeFieldContainer[ContainerRequest]
    constraints: Constraints
    cpu_milli: int
    memory_bytes: int
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., containers: _Optional[_Iterable[_Union[ContainerRequest, _Mapping]]] = ..., constraints: _Optional[_Union[Constraints, _Mapping]] = ..., cpu_milli: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class DeviceAssignment(_message.Message):
    __slots__ = ("uuid", "index", "vendor", "model", "vram_bytes", "tflops_milli", "island")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    TFLOPS_MILLI_FIELD_NUMBER: _ClassVar[int]
    ISLAND_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    vendor: str
    model: str
    vram_bytes: int
    tflops_milli: int
    island: str
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., vendor: _Optional[str] = ..., model: _Optional[str] = ..., vram_bytes: _Optional[int] = ..., tflops_milli: _Optional[int] = ..., island: _Optional[str] = ...) -> None: ...

class ContainerAssignment(_message.Message):
    __slots__ = ("container", "devices")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    container: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceAssignment]
    def __init__(self, container: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceAssignment, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("pod", "node", "state", "containers", "reserved_at_unix_ms")
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    node: str
    state: AssignmentState
    containers: _containers.RepeatedCompositeFieldContainer[ContainerAssignment]
    reserved_at_unix_ms: int
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., node: _Optional[str] = ..., state: _Optional[_Union[AssignmentState, str]] = ..., containers: _Optional[_Iterable[_Union[ContainerAssignment, _Mapping]]] = ..., reserved_at_unix_ms: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request", "node")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    request: PodRequest
    node: str
    def __init__(self, request: _Optional[_Union[PodRequest, _Mapping]] = ..., node: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("pod_uid", "node")
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    pod_uid: str
    node: str
    def __init__(self, pod_uid: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class ConfirmResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("pod_uid",)
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    pod_uid: str
    def __init__(self, pod_uid: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class GetNodeAssignmentsRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class GetNodeAssignmentsResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("request", "pod", "nodes")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    request: PodRequest
    pod: PodRef
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request: _Optional[_Union[PodRequest, _Mapping]] = ..., pod: _Optional[_Union[PodRef, _Mapping]] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeVerdict(_message.Message):
    __slots__ = ("node", "fits", "reason", "score", "proposal")
    NODE_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    node: str
    fits: bool
    reason: str
    score: float
    proposal: _containers.RepeatedCompositeFieldContainer[ContainerAssignment]
    def __init__(self, node: _Optional[str] = ..., fits: _Optional[bool] = ..., reason: _Optional[str] = ..., score: _Optional[float] = ..., proposal: _Optional[_Iterable[_Union[ContainerAssignment, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("verdicts", "summary")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[NodeVerdict]
    summary: str
    def __init__(self, verdicts: _Optional[_Iterable[_Union[NodeVerdict, _Mapping]]] = ..., summary: _Optional[str] = ...) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Island(_message.Message):
    __slots__ = ("node", "island", "vendor", "vram_bytes", "devices")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ISLAND_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    node: str
    island: str
    vendor: str
    vram_bytes: int
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., island: _Optional[str] = ..., vendor: _Optional[str] = ..., vram_bytes: _Optional[int] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCapacityResponse(_message.Message):
    __slots__ = ("largest", "largest_by_vendor", "nodes", "devices", "healthy_devices")
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    LARGEST_BY_VENDOR_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_DEVICES_FIELD_NUMBER: _ClassVar[int]
    largest: Island
    largest_by_vendor: _containers.RepeatedCompositeFieldContainer[Island]
    nodes: int
    devices: int
    healthy_devices: int
    def __init__(self, largest: _Optional[_Union[Island, _Mapping]] = ..., largest_by_vendor: _Optional[_Iterable[_Union[Island, _Mapping]]] = ..., nodes: _Optional[int] = ..., devices: _Optional[int] = ..., healthy_devices: _Optional[int] = ...) -> None: ...
