"""The HTML report: self-contained, every section and class present, numbers that match the card,
and images that a real browser (headless Chromium) loads and paints."""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image, ImageStat

from serving.card import load_card
from training.__main__ import main
from training.errors import UserError
from training.quantize import quantize_artifact
from training.report import write_report

HEADINGS = ["Overview", "Training curves", "Confusion matrix",
            "Per-class precision, recall and F1", "Misclassified examples",
            "First-layer filters and feature maps", "Grad-CAM gallery", "Quantization"]
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.slow  # trains two small models (the session fixture)


class Page(HTMLParser):
    """Collects headings, images and table rows (each with its section) and sections' text."""

    def __init__(self, text: str):
        super().__init__()
        self.section, self.headings, self.images, self.rows, self.text = None, [], [], [], {}
        self._in_h2 = self._in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.append({**attrs, "section": self.section})
        elif tag == "tr":
            self.rows.append((self.section, []))
        elif tag in ("td", "th"):
            self.rows[-1][1].append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"
        self._in_cell = self._in_cell and tag not in ("td", "th")

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
        if self._in_cell:
            self.rows[-1][1][-1] += data
        self.text[self.section] = self.text.get(self.section, "") + data

    def table(self, section: str) -> list[list[str]]:
        return [cells for where, cells in self.rows if where == section]


@pytest.fixture(scope="module")
def quantized_report(trained):
    artifact = trained("gap")
    quantize_artifact(artifact, ["int8", "float32"], representative_size=100, max_drop=100.0)
    return artifact, write_report(artifact)


@pytest.fixture(scope="module")
def plain_report(trained):
    artifact = trained("dense")
    return artifact, write_report(artifact)


@pytest.fixture(params=["quantized", "plain"])
def report(request):
    artifact, path = request.getfixturevalue(f"{request.param}_report")
    return request.param, artifact, path, Page(path.read_text(encoding="utf-8"))


def test_the_report_is_self_contained_and_every_image_decodes(report):
    _, artifact, path, page = report
    assert path == artifact / "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    assert re.search(r"url\(", text) is None
    labels = load_card(artifact).labels
    assert len(page.images) >= 6 + len(labels)
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert len(image["alt"]) > 20, image["alt"]  # describes the figure, not just "figure"
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix):])))
        assert decoded.width > 0 and decoded.height > 0
        assert (int(image["width"]), int(image["height"])) == decoded.size
    gallery = [image for image in page.images if image["section"] == "gradcam"]
    assert len(gallery) == len(labels)  # one figure per class


def test_every_section_and_class_is_there(report):
    kind, artifact, _, page = report
    card = load_card(artifact)
    assert page.headings == HEADINGS
    for label in card.labels:
        assert label in page.text["per_class"] and label in page.text["gradcam"]
        assert any(label in image["alt"] for image in page.images
                   if image["section"] == "gradcam")
    assert card.name in page.text[None] and card.git_commit in page.text["overview"]
    assert f"{card.model.parameters:,}" in page.text["overview"]
    expected_source = ("model.tflite (int8) through the serving code" if kind == "quantized"
                       else "the Keras model (model.keras)")
    assert expected_source in page.text["gradcam"]
    per_class = card.metrics["evaluation"]["per_class"]
    assert page.table("per_class")[1:] == [
        [label, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
         str(m["support"])] for label, m in per_class.items()]


def test_the_quantization_table_matches_the_card(quantized_report):
    artifact, path = quantized_report
    page = Page(path.read_text(encoding="utf-8"))
    quantization = load_card(artifact).quantization
    assert f"Keras accuracy {quantization.keras_accuracy:.4f}" in page.text["quantization"]
    assert "passed" in page.text["quantization"]
    header, *rows = page.table("quantization")
    assert header[:3] == ["mode", "file", "bytes"] and len(rows) == len(quantization.variants)
    for (mode, variant), row in zip(quantization.variants.items(), rows, strict=True):
        drop = quantization.gate.drop_points[mode]
        assert row == [mode + (" (primary)" if mode == "int8" else ""), variant.file,
                       f"{variant.bytes:,}", f"{variant.bytes / 1024:.1f}",
                       f"{variant.accuracy:.4f}", f"{variant.agreement:.4f}",
                       f"{drop:+.3f}", f"{variant.latency_ms_batch1:.3f}"]


def test_a_model_not_quantized_says_so(plain_report):
    _, path = plain_report
    page = Page(path.read_text(encoding="utf-8"))
    assert "not quantized yet" in page.text["quantization"]
    assert ["Deployable", "no"] in page.table("overview")


def test_a_directory_that_is_not_an_artifact_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="not a training artifact"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "artifact directory not found" in capsys.readouterr().err


def chromium(*args, profile):
    """Debian's chromium, headless; returns stdout (the DOM for --dump-dom)."""
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's `chromium` on PATH "
                                              "(apt-get install chromium)")
def test_chromium_loads_and_paints_every_image(quantized_report, tmp_path):
    _, path = quantized_report
    expected = len(Page(path.read_text(encoding="utf-8")).images)
    probe = tmp_path / "probe.html"
    script = ("<script>addEventListener('load', () => { const all = [...document.images];"
              " const ok = all.filter(i => i.complete && i.naturalWidth > 0).length;"
              " document.body.insertAdjacentText('beforeend', `IMAGES_OK ${ok}/${all.length}`);"
              " });</script>")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", script + "</body>"),
                     encoding="utf-8")
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(),
                   profile=tmp_path / "profile")
    match = re.search(r"IMAGES_OK (\d+)/(\d+)", dom)
    assert match, dom[-500:]
    assert int(match.group(1)) == int(match.group(2)) == expected

    shot = tmp_path / "report.png"
    chromium("--window-size=1400,3000", f"--screenshot={shot}", path.as_uri(),
             profile=tmp_path / "profile")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 3000)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10  # not a blank page
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 1000  # figures, not just text
