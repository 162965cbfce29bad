"""Server settings: defaults < file < environment < flags, strictly checked; JSON logs."""

import json
import logging

import pytest

from serving.config import ConfigError, ServerConfig, load_config
from serving.observe.logs import JsonFormatter


def test_precedence_defaults_file_environment_flags(tmp_path):
    file = tmp_path / "server.yaml"
    file.write_text("port: 9001\nmax-batch-size: 8\nlog_format: json\n")
    env = {"SIGHTLINE_PORT": "9002", "SIGHTLINE_MAX_QUEUE_DELAY_MS": "0.5"}
    config = load_config(["--config", str(file), "--port", "9003"], env)
    assert (config.port, config.max_batch_size, config.max_queue_delay_ms) == (9003, 8, 0.5)
    assert config.log_format == "json" and config.max_queue_size == ServerConfig().max_queue_size
    assert load_config(["--config", str(file)], env).port == 9002
    assert load_config(["--config", str(file)], {}).port == 9001
    assert load_config([], {}).port == 8500


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--port", "eighty"], {}, "port must be int; got 'eighty'"),
    (["--port", "0"], {}, "port must be positive; got 0"),
    ([], {"SIGHTLINE_VERSION_POLICY": "newest"}, "version_policy must be one of"),
    (["--tls-cert", "a.crt"], {}, "tls_cert and tls_key go together"),
    (["--tls-client-ca", "ca.crt"], {}, "mutual TLS"),
    (["--max-image-bytes", "1048576", "--max-message-bytes", "1048576"], {},
     "must exceed max_image_bytes"),
    (["--max-streams", "0"], {}, "max_streams must be positive"),
    (["--stream-idle-seconds", "0"], {}, "stream_idle_seconds must be positive"),
    (["--admit-wait-share", "0"], {}, r"admit_wait_share must be in \(0, 1\]; got 0.0"),
    (["--admit-wait-share", "1.5"], {}, r"admit_wait_share must be in \(0, 1\]; got 1.5"),
])
def test_bad_settings_are_refused_by_name(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env)


def test_unknown_file_keys_are_refused(tmp_path):
    file = tmp_path / "server.json"
    file.write_text(json.dumps({"prot": 1}))
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config(["--config", str(file)], {})


def test_the_default_image_limit_is_reachable_under_the_message_limit():
    config = ServerConfig()
    assert config.max_image_bytes < config.max_message_bytes


def test_a_request_never_carries_more_images_than_the_queue_holds():
    assert ServerConfig().request_image_limit == 64
    assert ServerConfig(max_queue_size=16).request_image_limit == 16
    assert ServerConfig(max_request_images=8).request_image_limit == 8


@pytest.mark.parametrize(("host", "metrics_host", "address"), [
    ("127.0.0.1", "", "127.0.0.1"), ("[::]", "", "::"), ("[::1]", "", "::1"),
    ("0.0.0.0", "", "0.0.0.0"), ("127.0.0.1", "0.0.0.0", "0.0.0.0"),
])
def test_metrics_listen_where_the_server_does_unless_told(host, metrics_host, address):
    assert ServerConfig(host=host, metrics_host=metrics_host).metrics_address == address


def test_the_cores_are_shared_out_among_the_processes():
    import os

    cores = len(os.sched_getaffinity(0))
    assert ServerConfig().process_count == cores  # one process per core
    assert ServerConfig().worker_count == 1 and ServerConfig().decode_slots == 2
    assert ServerConfig(processes=1).worker_count == cores
    assert ServerConfig(processes=1).decode_slots == 2 * cores
    assert ServerConfig(workers=3).worker_count == 3
    with pytest.raises(ConfigError, match="processes must be >= 0"):
        ServerConfig(processes=-1)


def test_json_log_lines():
    record = logging.LogRecord("sightline.server", logging.WARNING, __file__, 1,
                               "loaded %s", ("gap",), None)
    record.fields = {"version": 3}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "loaded gap" and line["level"] == "WARNING"
    assert line["version"] == 3 and line["time"].endswith("Z")
