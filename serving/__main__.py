"""``python -m serving``: run the gRPC server (see ``serving.api.server``)."""

from serving.api.server import main

main()
