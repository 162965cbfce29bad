"""``python -m serving``: run the gRPC server (see ``serving.server``)."""

from serving.server import main

main()
