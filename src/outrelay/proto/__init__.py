"""Generated protobuf and gRPC modules (``*_pb2``, ``*_pb2_grpc``).

The sources are ``proto/outrelay/proto/*.proto``; regenerate with
``make proto``. Do not edit the generated files by hand.
"""
