"""Log lines: text and JSON, and a worker's lines naming its process."""

import json
import logging

import pytest

from serving.observe.logs import setup_logging, tag_process


@pytest.fixture
def root_handlers():
    """setup_logging changes the root logger's handlers and level: both are put back, or
    later tests' caplog sees INFO records it never asked for."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def formatted(message: str = "serving on port %d", *args) -> str:
    record = logging.LogRecord("sightline.server", logging.INFO, __file__, 1, message,
                               args or (50051,), None)
    (handler,) = logging.getLogger().handlers
    return handler.format(record)


def test_a_workers_text_lines_name_its_process(root_handlers):
    setup_logging("text")
    assert formatted().endswith(" INFO sightline.server: serving on port 50051")
    tag_process(1)
    assert formatted().endswith(" INFO process 1 sightline.server: serving on port 50051")


def test_a_workers_json_lines_carry_its_process(root_handlers):
    setup_logging("json")
    assert "process" not in json.loads(formatted())
    tag_process(0)
    line = json.loads(formatted())
    assert line["process"] == 0 and line["message"] == "serving on port 50051"
