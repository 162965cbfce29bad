"""TLS, mutual TLS and bearer tokens on a real server; certificates made with openssl."""

import shutil
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.conftest import classify_request, expect_error, samples, scrape, value

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt",
                cwd=d)
    return d


def secure_stub(port, pki, client_cert=True):
    read = lambda name: (pki / name).read_bytes()  # noqa: E731
    credentials = grpc.ssl_channel_credentials(
        read("ca.crt"), read("client.key") if client_cert else None,
        read("client.crt") if client_cert else None)
    channel = grpc.secure_channel(f"localhost:{port}", credentials)
    return channel, pb_grpc.ImageClassifierStub(channel)


def test_tls(repository, start_server, pki):
    server = start_server(repository, tls_cert=str(pki / "server.crt"),
                          tls_key=str(pki / "server.key"))
    channel, stub = secure_stub(server.port, pki, client_cert=False)
    with channel:
        assert stub.Classify(classify_request(), timeout=10).classes
    with grpc.insecure_channel(f"localhost:{server.port}") as plain:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ImageClassifierStub(plain).Classify(classify_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(repository, start_server, pki):
    server = start_server(repository, tls_cert=str(pki / "server.crt"),
                          tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt"))
    channel, stub = secure_stub(server.port, pki, client_cert=True)
    with channel:
        assert stub.Classify(classify_request(), timeout=10).classes
    channel, stub = secure_stub(server.port, pki, client_cert=False)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classify_request(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(repository, start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\n  # an indented comment is a comment\nsecret-one\n"
                      "\tsecret-two  \n")
    server = start_server(repository, auth_token_file=str(tokens))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        for header in [None, "Bearer wrong", "secret-one", "Basic secret-one", "Bearer ",
                       "Bearer # an indented comment is a comment"]:
            metadata = [("authorization", header)] if header is not None else None
            with expect_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
                stub.Classify(classify_request(), timeout=5, metadata=metadata)
        for pair in (["Bearer secret-one", "Bearer wrong"], ["Bearer wrong", "Bearer secret-one"]):
            with expect_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
                stub.Classify(classify_request(), timeout=5,
                              metadata=[("authorization", header) for header in pair])
        for token in ("secret-one", "secret-two"):
            response = stub.Classify(classify_request(), timeout=10,
                                     metadata=[("authorization", f"Bearer {token}")])
            assert response.classes
        batch = pb.ClassifyBatchRequest(requests=[classify_request()])
        with expect_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            stub.ClassifyBatch(batch, timeout=5)
        assert stub.ClassifyBatch(batch, timeout=10, metadata=[
            ("authorization", "Bearer secret-one")]).responses[0].classes
        stream = stub.ClassifyStream(iter([classify_request()]), timeout=5)
        with expect_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            list(stream)
        refused = value(samples(scrape(server, token="secret-two")),
                        "sightline_requests_rejected_total", reason="unauthenticated")
        assert refused == 10  # eight Classify calls, one ClassifyBatch and one stream
        health = health_pb2_grpc.HealthStub(channel)  # exempt: probes carry no secret
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
