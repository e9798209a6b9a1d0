from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_TYPE_UNSPECIFIED: _ClassVar[AdapterType]
    ADAPTER_TYPE_LORA: _ClassVar[AdapterType]
    ADAPTER_TYPE_DEMA: _ClassVar[AdapterType]
    ADAPTER_TYPE_FULL: _ClassVar[AdapterType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_FLOAT32: _ClassVar[Encoding]
    ENCODING_FLOAT16: _ClassVar[Encoding]
    ENCODING_BFLOAT16: _ClassVar[Encoding]
    ENCODING_INT8: _ClassVar[Encoding]

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_GLOBAL: _ClassVar[Scope]
    SCOPE_FAMILY: _ClassVar[Scope]
    SCOPE_CLIENT: _ClassVar[Scope]
ADAPTER_TYPE_UNSPECIFIED: AdapterType
ADAPTER_TYPE_LORA: AdapterType
ADAPTER_TYPE_DEMA: AdapterType
ADAPTER_TYPE_FULL: AdapterType
ENCODING_UNSPECIFIED: Encoding
ENCODING_FLOAT32: Encoding
ENCODING_FLOAT16: Encoding
ENCODING_BFLOAT16: Encoding
ENCODING_INT8: Encoding
SCOPE_UNSPECIFIED: Scope
SCOPE_GLOBAL: Scope
SCOPE_FAMILY: Scope
SCOPE_CLIENT: Scope

class AdapterManifest(_message.Message):
    __slots__ = ("base_model", "base_model_sha256", "adapter_type", "rank", "alpha", "target_modules", "family", "client_id", "round", "strategy", "scope", "num_classes", "run_id", "experts", "banks")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    BANKS_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    base_model_sha256: str
    adapter_type: AdapterType
    rank: int
    alpha: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    family: str
    client_id: str
    round: int
    strategy: str
    scope: Scope
    num_classes: int
    run_id: str
    experts: int
    banks: int
    def __init__(self, base_model: _Optional[str] = ..., base_model_sha256: _Optional[str] = ..., adapter_type: _Optional[_Union[AdapterType, str]] = ..., rank: _Optional[int] = ..., alpha: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., family: _Optional[str] = ..., client_id: _Optional[str] = ..., round: _Optional[int] = ..., strategy: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., num_classes: _Optional[int] = ..., run_id: _Optional[str] = ..., experts: _Optional[int] = ..., banks: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "encoding", "shape", "data", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    encoding: Encoding
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    def __init__(self, name: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ...) -> None: ...

class AdapterBundle(_message.Message):
    __slots__ = ("manifest", "tensors", "sha256")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    manifest: AdapterManifest
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    sha256: str
    def __init__(self, manifest: _Optional[_Union[AdapterManifest, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., sha256: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "bundle_sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    bundle_sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...

class AdapterKey(_message.Message):
    __slots__ = ("scope", "name", "run_id", "round")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    name: str
    run_id: str
    round: int
    def __init__(self, scope: _Optional[_Union[Scope, str]] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("key", "offset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    key: AdapterKey
    offset: int
    def __init__(self, key: _Optional[_Union[AdapterKey, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("key", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: AdapterKey
    size: int
    def __init__(self, key: _Optional[_Union[AdapterKey, _Mapping]] = ..., size: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListEntry(_message.Message):
    __slots__ = ("key", "manifest", "size", "bundle_sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    key: AdapterKey
    manifest: AdapterManifest
    size: int
    bundle_sha256: str
    def __init__(self, key: _Optional[_Union[AdapterKey, _Mapping]] = ..., manifest: _Optional[_Union[AdapterManifest, _Mapping]] = ..., size: _Optional[int] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ListEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[ListEntry, _Mapping]]] = ...) -> None: ...
