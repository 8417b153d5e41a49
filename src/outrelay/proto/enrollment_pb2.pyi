from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: str
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("cert_pem", "ca_pem", "agent_uri")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_URI_FIELD_NUMBER: _ClassVar[int]
    cert_pem: str
    ca_pem: str
    agent_uri: str
    def __init__(self, cert_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., agent_uri: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("cert_pem", "ca_pem")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    cert_pem: str
    ca_pem: str
    def __init__(self, cert_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ...) -> None: ...

class IssueTokenRequest(_message.Message):
    __slots__ = ("tenant", "agent_id", "ttl_seconds")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    agent_id: str
    ttl_seconds: int
    def __init__(self, tenant: _Optional[str] = ..., agent_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IssueTokenResponse(_message.Message):
    __slots__ = ("token", "jti", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    jti: str
    expires_unix: int
    def __init__(self, token: _Optional[str] = ..., jti: _Optional[str] = ..., expires_unix: _Optional[int] = ...) -> None: ...
