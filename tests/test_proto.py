"""The wire schemas: generated code is fresh, and matches the spec tables.

The tables below are wire.md §4 and control.md §3-§5 written as data, plus
our extensions (Audit.RecordBatch, the Enrollment service, PolicyRule.action). They are checked
against the descriptors of the committed generated modules, so a renamed or
renumbered field fails here before it breaks interop with the reference.
"""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

ROOT = Path(__file__).resolve().parents[1]
PROTO_SRC = ROOT / "proto" / "outrelay" / "proto"
GENERATED = ROOT / "src" / "outrelay" / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
HAND_WRITTEN = {"__init__.py"}

ORP = "outrelay.orp.v1"
CONTROL = "outrelay.control.v1"

# --------------------------------------------------------------------------
# Spec tables. A field is (number, name, type); type is the proto spelling,
# with "repeated " in front for repeated fields and names of messages and
# enums relative to the package.
# --------------------------------------------------------------------------

Fields = list[tuple[int, str, str]]

POSITIONS: Fields = [
    (1, "stream_id", "uint64"),
    (2, "my_position", "uint64"),
    (3, "peer_ack_position", "uint64"),
]
CANDIDATES: Fields = [(1, "stream_id", "uint64"), (2, "candidates", "repeated Candidate")]

# wire.md §4, all reference-compatible.
ORP_MESSAGES: dict[str, Fields] = {
    "Hello": [
        (1, "protocol_version", "string"),
        (2, "agent_uri", "string"),
        (3, "capabilities", "repeated string"),
    ],
    "HelloAck": [
        (1, "session_id", "string"),
        (2, "server_time_unix_ms", "int64"),
        (3, "accepted_features", "repeated string"),
    ],
    "Register": [(1, "service_name", "string"), (2, "local_addr", "string")],
    "RegisterAck": [(1, "service_id", "string")],
    "OpenStream": [
        (1, "target_service", "string"),
        (2, "method", "string"),
        (3, "stream_id", "uint64"),
    ],
    "IncomingStream": [
        (1, "target_service", "string"),
        (2, "method", "string"),
        (3, "source_agent_uri", "string"),
        (4, "stream_id", "uint64"),
    ],
    "StreamAccept": [],
    "StreamReject": [(1, "code", "uint32"), (2, "reason", "string")],
    "StreamCheckpoint": POSITIONS,
    "StreamResume": POSITIONS,
    "ObservedAddrQuery": [(1, "request_id", "uint64")],
    "ObservedAddrResp": [(1, "request_id", "uint64"), (2, "ip", "string"), (3, "port", "uint32")],
    "Candidate": [
        (1, "kind", "string"),
        (2, "ip", "string"),
        (3, "port", "uint32"),
        (4, "priority", "uint32"),
    ],
    "CandidateOffer": CANDIDATES,
    "CandidateAnswer": CANDIDATES,
    "MigrateToP2P": [*POSITIONS, (4, "selected", "Candidate")],
    "MigrateToRelay": [*POSITIONS, (4, "reason", "string")],
    "AllocGranted": [
        (1, "stream_id", "uint64"),
        (2, "my_allocation", "uint32"),
        (3, "peer_allocation", "uint32"),
        (4, "forward_endpoint", "string"),
    ],
    "StreamReady": [(1, "stream_id", "uint64")],
}

# control.md §3.
REGISTRY_MESSAGES: dict[str, Fields] = {
    "RegisterServiceRequest": [
        (1, "tenant", "string"),
        (2, "service_name", "string"),
        (3, "agent_uri", "string"),
        (4, "relay_id", "string"),
        (5, "local_addr", "string"),
    ],
    "RegisterServiceResponse": [(1, "service_id", "string")],
    "DeregisterAgentRequest": [
        (1, "tenant", "string"),
        (2, "agent_uri", "string"),
        (3, "relay_id", "string"),
    ],
    "DeregisterAgentResponse": [],
    "ResolveRequest": [
        (1, "tenant", "string"),
        (2, "service_name", "string"),
        (3, "caller_region", "string"),
    ],
    "Provider": [
        (1, "service_id", "string"),
        (2, "agent_uri", "string"),
        (3, "relay_id", "string"),
        (4, "local_addr", "string"),
        (5, "updated_at_unix_ms", "int64"),
        (6, "relay_endpoint", "string"),
    ],
    "ResolveResponse": [(1, "providers", "repeated Provider")],
    "WatchRequest": [(1, "tenant", "string"), (2, "service_names", "repeated string")],
    "WatchEvent": [
        (1, "kind", "EventKind"),
        (2, "provider", "Provider"),
        (3, "service_name", "string"),
    ],
    "UpsertRelayRequest": [(1, "id", "string"), (2, "region", "string"), (3, "endpoint", "string")],
    "UpsertRelayResponse": [],
    "ListServicesRequest": [(1, "tenant", "string")],
    "ListServicesResponse": [(1, "services", "repeated ServiceEntry")],
    "ServiceEntry": [
        (1, "service_name", "string"),
        (2, "service_id", "string"),
        (3, "created_at_unix_ms", "int64"),
        (4, "providers", "repeated ProviderStatus"),
    ],
    "ProviderStatus": [
        (1, "provider", "Provider"),
        (2, "relay_region", "string"),
        (3, "relay_last_heartbeat_unix_ms", "int64"),
        (4, "live", "bool"),
        (5, "agent_last_seen_unix_ms", "int64"),
    ],
    "ListRelaysRequest": [],
    "ListRelaysResponse": [(1, "relays", "repeated RelayEntry")],
    "RelayEntry": [
        (1, "id", "string"),
        (2, "region", "string"),
        (3, "endpoint", "string"),
        (4, "last_heartbeat_unix_ms", "int64"),
        (5, "live", "bool"),
    ],
}

# control.md §4.
POLICY_MESSAGES: dict[str, Fields] = {
    "PolicyRule": [
        (1, "id", "string"),
        (2, "tenant", "string"),
        (3, "caller_pattern", "string"),
        (4, "target_pattern", "string"),
        (5, "method_pattern", "string"),
        (6, "decision", "Decision"),
        (7, "expires_unix_ms", "int64"),
        (8, "created_at_unix_ms", "int64"),
        (9, "p2p_mode", "P2PMode"),
        (10, "relay_mode", "RelayMode"),
        (11, "action", "RuleAction"),  # our extension: 0 = DIAL, what the reference means
    ],
    "AddPolicyRequest": [(1, "rule", "PolicyRule")],
    "AddPolicyResponse": [(1, "id", "string")],
    "RemovePolicyRequest": [(1, "tenant", "string"), (2, "id", "string")],
    "RemovePolicyResponse": [(1, "removed", "bool")],
    "ListPoliciesRequest": [(1, "tenant", "string")],
    "ListPoliciesResponse": [(1, "rules", "repeated PolicyRule")],
    "WatchPoliciesRequest": [(1, "tenant", "string")],
    "PolicyEvent": [
        (1, "kind", "PolicyEvent.Kind"),
        (2, "rule", "PolicyRule"),
        (3, "removed_id", "string"),
    ],
}

# control.md §5, plus RecordBatch (our extension).
AUDIT_MESSAGES: dict[str, Fields] = {
    "AuditEvent": [
        (1, "ts_unix_ms", "int64"),
        (2, "tenant", "string"),
        (3, "caller", "string"),
        (4, "target", "string"),
        (5, "method", "string"),
        (6, "decision", "Decision"),
        (7, "reason", "string"),
        (8, "stream_id", "string"),
    ],
    "RecordAuditRequest": [(1, "event", "AuditEvent")],
    "RecordAuditResponse": [],
    "QueryAuditRequest": [
        (1, "tenant", "string"),
        (2, "caller", "string"),
        (3, "target", "string"),
        (4, "since_unix_ms", "int64"),
        (5, "limit", "int32"),
    ],
    "RecordBatchRequest": [(1, "events", "repeated AuditEvent")],
    "RecordBatchResponse": [(1, "recorded", "uint32")],
}

# Our extension.
ENROLLMENT_MESSAGES: dict[str, Fields] = {
    "EnrollRequest": [(1, "token", "string"), (2, "csr_pem", "string")],
    "EnrollResponse": [
        (1, "cert_pem", "string"),
        (2, "ca_pem", "string"),
        (3, "agent_uri", "string"),
    ],
    "RenewRequest": [(1, "csr_pem", "string")],
    "RenewResponse": [(1, "cert_pem", "string"), (2, "ca_pem", "string")],
    "IssueTokenRequest": [
        (1, "tenant", "string"),
        (2, "agent_id", "string"),
        (3, "ttl_seconds", "int64"),
    ],
    "IssueTokenResponse": [
        (1, "token", "string"),
        (2, "jti", "string"),
        (3, "expires_unix", "int64"),
    ],
}

# enum name (relative to the package) -> {value name: number}
ENUMS: dict[str, dict[str, int]] = {
    "EventKind": {
        "EVENT_KIND_UNSPECIFIED": 0,
        "EVENT_KIND_REGISTER": 1,
        "EVENT_KIND_DEREGISTER": 2,
    },
    "Decision": {"DECISION_UNSPECIFIED": 0, "DECISION_ALLOW": 1, "DECISION_DENY": 2},
    "RelayMode": {"RELAY_MODE_SPLICE": 0, "RELAY_MODE_FORWARD": 1},
    "P2PMode": {"P2P_ALLOWED": 0, "P2P_FORBIDDEN": 1, "P2P_REQUIRED": 2},
    "RuleAction": {"RULE_ACTION_DIAL": 0, "RULE_ACTION_BIND": 1},  # our extension
    "PolicyEvent.Kind": {
        "POLICY_KIND_UNSPECIFIED": 0,
        "POLICY_KIND_ADDED": 1,
        "POLICY_KIND_REMOVED": 2,
        "POLICY_KIND_SNAPSHOT_END": 3,
    },
}

# service -> method -> (request, response, server-streaming); no method
# streams from the client.
Methods = dict[str, tuple[str, str, bool]]
SERVICES: dict[str, Methods] = {
    "Registry": {
        "RegisterService": ("RegisterServiceRequest", "RegisterServiceResponse", False),
        "DeregisterAgent": ("DeregisterAgentRequest", "DeregisterAgentResponse", False),
        "Resolve": ("ResolveRequest", "ResolveResponse", False),
        "Watch": ("WatchRequest", "WatchEvent", True),
        "UpsertRelay": ("UpsertRelayRequest", "UpsertRelayResponse", False),
        "ListServices": ("ListServicesRequest", "ListServicesResponse", False),
        "ListRelays": ("ListRelaysRequest", "ListRelaysResponse", False),
    },
    "Policy": {
        "AddPolicy": ("AddPolicyRequest", "AddPolicyResponse", False),
        "RemovePolicy": ("RemovePolicyRequest", "RemovePolicyResponse", False),
        "ListPolicies": ("ListPoliciesRequest", "ListPoliciesResponse", False),
        "Watch": ("WatchPoliciesRequest", "PolicyEvent", True),
    },
    "Audit": {
        "Record": ("RecordAuditRequest", "RecordAuditResponse", False),
        "Query": ("QueryAuditRequest", "AuditEvent", True),
        "RecordBatch": ("RecordBatchRequest", "RecordBatchResponse", False),
    },
    "Enrollment": {
        "Enroll": ("EnrollRequest", "EnrollResponse", False),
        "Renew": ("RenewRequest", "RenewResponse", False),
        "IssueToken": ("IssueTokenRequest", "IssueTokenResponse", False),
    },
}

# module -> (package, top-level messages, top-level enums, services)
FILES: dict[str, tuple[str, dict[str, Fields], set[str], set[str]]] = {
    "orp": (ORP, ORP_MESSAGES, set(), set()),
    "registry": (CONTROL, REGISTRY_MESSAGES, {"EventKind"}, {"Registry"}),
    "policy": (
        CONTROL,
        POLICY_MESSAGES,
        {"Decision", "RelayMode", "P2PMode", "RuleAction"},
        {"Policy"},
    ),
    "audit": (CONTROL, AUDIT_MESSAGES, set(), {"Audit"}),
    "enrollment": (CONTROL, ENROLLMENT_MESSAGES, set(), {"Enrollment"}),
}

MESSAGE_CASES = [(mod, name) for mod, (_, msgs, _, _) in FILES.items() for name in msgs]

SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def pb2(module: str) -> ModuleType:
    return importlib.import_module(f"outrelay.proto.{module}_pb2")


def file_descriptor(module: str) -> FileDescriptor:
    descriptor: FileDescriptor = pb2(module).DESCRIPTOR
    return descriptor


def type_name(field: FieldDescriptor) -> str:
    """Render a field's type the way the spec tables spell it."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        base = field.message_type.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = field.enum_type.full_name
    else:
        base = SCALARS[field.type]
    package = field.file.package + "."
    base = base.removeprefix(package)
    return f"repeated {base}" if field.is_repeated else base


def message_descriptor(module: str, name: str) -> Descriptor:
    descriptor: Descriptor = file_descriptor(module).message_types_by_name[name]
    return descriptor


# --------------------------------------------------------------------------
# Generated code is fresh
# --------------------------------------------------------------------------


def proto_stems() -> set[str]:
    return {path.stem for path in PROTO_SRC.glob("*.proto")}


def committed_generated() -> set[str]:
    return {
        path.name
        for path in GENERATED.iterdir()
        if path.is_file() and path.name not in HAND_WRITTEN
    }


def test_every_proto_has_generated_modules_and_nothing_else() -> None:
    expected = {stem + suffix for stem in proto_stems() for suffix in SUFFIXES}
    committed = committed_generated()
    assert proto_stems() == set(FILES), "spec tables in this test do not cover every .proto"
    assert committed - expected == set(), (
        f"generated files without a .proto source: {sorted(committed - expected)}; run `make proto`"
    )
    assert expected - committed == set(), (
        f"missing generated files: {sorted(expected - committed)}; run `make proto`"
    )
    assert (GENERATED / "__init__.py").is_file()


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
        cwd=tmp_path,  # the generator must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"generate.py failed:\n{proc.stdout}\n{proc.stderr}"
    fresh_dir = tmp_path / "outrelay" / "proto"
    fresh = {path.name for path in fresh_dir.iterdir()}
    assert "__init__.py" not in fresh, "the generator must not write __init__.py"
    assert fresh == committed_generated(), "generated file set differs; run `make proto`"
    stale = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(fresh_dir / name, GENERATED / name, shallow=False)
    ]
    assert stale == [], f"committed generated code is stale: {stale}; run `make proto`"


# --------------------------------------------------------------------------
# Descriptors match the spec tables
# --------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(FILES))
def test_file_contents(module: str) -> None:
    package, messages, enums, services = FILES[module]
    fd = file_descriptor(module)
    assert fd.package == package
    assert set(fd.message_types_by_name) == set(messages)
    assert set(fd.enum_types_by_name) == enums
    assert set(fd.services_by_name) == services


@pytest.mark.parametrize(("module", "name"), MESSAGE_CASES)
def test_message_fields(module: str, name: str) -> None:
    package, messages, _, _ = FILES[module]
    desc = message_descriptor(module, name)
    assert desc.full_name == f"{package}.{name}"
    actual = [(f.number, f.name, type_name(f)) for f in desc.fields]
    assert sorted(actual) == sorted(messages[name])
    for field in desc.fields:
        # proto3 implicit presence everywhere: no `optional`, no oneofs
        assert field.containing_oneof is None
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            assert not field.has_presence, field.full_name


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values(enum: str) -> None:
    module = "registry" if enum == "EventKind" else "policy"
    fd = file_descriptor(module)
    outer, _, inner = enum.partition(".")
    desc = (
        fd.message_types_by_name[outer].enum_types_by_name[inner]
        if inner
        else fd.enum_types_by_name[outer]
    )
    assert desc.full_name == f"{CONTROL}.{enum}"
    assert {v.name: v.number for v in desc.values} == ENUMS[enum]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods(service: str) -> None:
    module = service.lower()
    desc = file_descriptor(module).services_by_name[service]
    assert desc.full_name == f"{CONTROL}.{service}"
    actual = {
        m.name: (
            m.input_type.full_name.removeprefix(CONTROL + "."),
            m.output_type.full_name.removeprefix(CONTROL + "."),
            m.server_streaming,
        )
        for m in desc.methods
    }
    assert actual == SERVICES[service]
    assert not any(m.client_streaming for m in desc.methods)


def test_grpc_method_paths() -> None:
    grpc_mod = importlib.import_module("outrelay.proto.registry_pb2_grpc")
    seen: list[tuple[str, str]] = []

    class Channel:
        def __getattr__(self, kind: str):  # unary_unary, unary_stream, ...
            def make(path: str, **_: object) -> str:
                seen.append((kind, path))
                return path

            return make

    grpc_mod.RegistryStub(Channel())
    assert ("unary_stream", "/outrelay.control.v1.Registry/Watch") in seen
    assert ("unary_unary", "/outrelay.control.v1.Registry/RegisterService") in seen
    assert ("unary_unary", "/outrelay.control.v1.Registry/ListServices") in seen
    assert ("unary_unary", "/outrelay.control.v1.Registry/ListRelays") in seen


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "name"), MESSAGE_CASES)
def test_default_message_is_empty(module: str, name: str) -> None:
    cls = getattr(pb2(module), name)
    assert cls().SerializeToString() == b""
    assert cls.FromString(b"") == cls()


def test_known_encoding() -> None:
    orp = pb2("orp")
    # field 1 "a" (tag 0x0a, len 1), field 3 varint 300 (tag 0x18, 0xac 0x02)
    msg = orp.OpenStream(target_service="a", stream_id=300)
    assert msg.SerializeToString() == b"\x0a\x01a\x18\xac\x02"


def test_round_trips() -> None:
    orp, policy, audit = pb2("orp"), pb2("policy"), pb2("audit")
    host = orp.Candidate(kind="host", ip="10.0.0.1", port=4433, priority=100)
    srflx = orp.Candidate(kind="srflx", ip="203.0.113.9", port=61000, priority=50)
    rule = policy.PolicyRule(
        id="r1",
        tenant="acme",
        caller_pattern="outrelay://acme/*",
        target_pattern="svc-*",
        decision=policy.DECISION_DENY,
        expires_unix_ms=-1,
        p2p_mode=policy.P2P_REQUIRED,
        relay_mode=policy.RELAY_MODE_FORWARD,
    )
    event = audit.AuditEvent(
        ts_unix_ms=1_700_000_000_000, tenant="acme", decision=policy.DECISION_ALLOW, reason="r1"
    )
    messages = [
        orp.Hello(
            protocol_version="orp/1", agent_uri="outrelay://acme/agent/x", capabilities=["a", "b"]
        ),
        orp.CandidateOffer(stream_id=2**64 - 1, candidates=[host, srflx]),
        orp.MigrateToP2P(stream_id=7, my_position=1 << 40, peer_ack_position=3, selected=srflx),
        orp.AllocGranted(
            stream_id=1, my_allocation=1, peer_allocation=2**32 - 1, forward_endpoint="relay:7443"
        ),
        orp.StreamReject(code=403, reason="denied: no matching rule"),
        policy.PolicyEvent(kind=policy.PolicyEvent.POLICY_KIND_ADDED, rule=rule),
        audit.RecordBatchRequest(events=[event, audit.AuditEvent(tenant="b")]),
    ]
    for msg in messages:
        data = msg.SerializeToString()
        assert data
        assert type(msg).FromString(data) == msg
