"""Transport: the gRPC server, its two APIs and what guards them.

- ``server``: builds and runs the process (health, reflection, TLS, signals, shutdown);
- ``classifier``: Sightline's own API; ``oip``: the Open Inference Protocol v2;
- ``admission``: slots per call class, deadline-aware refusal; ``auth``: bearer tokens;
- ``health``: grpc.health.v1, sending Watch updates outside its lock;
- ``status``: ServingError -> gRPC status, the one table.

Only this room and observe/ import grpc. Each API translates messages into the data plane's
calls (``inference.dataplane``) and back, and holds no serving logic of its own.
"""
