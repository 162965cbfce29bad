"""The data plane: from a request's bytes to its ``Result``, whatever the transport.

- ``types``: the request id, the explanation wish, timing, results, a batch row;
- ``dataplane``: ``Inference.submit`` / ``finish``, model lookup, decode, render;
- ``runner``: a batch worker's job on its own interpreter (classify or explain, drift);
- ``attachments``: the loader that gives each version its batcher and drift monitor;
- ``observer``: the hooks metrics implement.

It may import batching/, runtime/, image/, cam/, repository/, observe.drift, the card and the
errors; never grpc or prometheus_client (tests/serving/test_rooms.py).
"""
