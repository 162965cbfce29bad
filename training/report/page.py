"""The report as one self-contained HTML page: inline CSS, PNGs as base64 data URIs, no scripts.

``render(card, figures, notes)`` lays out the sections in ``SECTIONS`` order. ``figures`` maps a
section key to its ``Figure`` list; ``notes`` maps a section key to a sentence shown above it
(e.g. where the Grad-CAM inputs came from). The tables (overview, per-class scores,
quantization) are built from the model card itself, so their numbers are the card's. Every
piece of text is escaped with ``html.escape``; nothing on the page loads from elsewhere.
"""

from __future__ import annotations

import base64
import html
import struct
from typing import NamedTuple

from serving.card import ModelCard

__all__ = ["SECTIONS", "Figure", "render"]

SECTIONS = {  # key -> heading, in page order
    "overview": "Overview",
    "curves": "Training curves",
    "confusion": "Confusion matrix",
    "per_class": "Per-class precision, recall and F1",
    "mistakes": "Misclassified examples",
    "filters": "First-layer filters and feature maps",
    "gradcam": "Grad-CAM gallery",
    "quantization": "Quantization",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;
 color:#1f2937;background:#f9fafb;margin:0;line-height:1.5}
main{max-width:1280px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.8rem;margin:0 0 4px}h2{font-size:1.3rem;margin:0 0 12px;padding-bottom:6px;
 border-bottom:2px solid #e5e7eb}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:20px 24px;
 margin:20px 0}
nav{font-size:.9rem;margin:8px 0 0}nav a{margin-right:14px;color:#2563eb;text-decoration:none}
.sub{color:#6b7280;margin:0}.note{color:#4b5563;font-style:italic}
table{border-collapse:collapse;font-size:.9rem;margin:8px 0}
th,td{padding:5px 12px;border-bottom:1px solid #e5e7eb;text-align:left}
th{background:#f3f4f6;font-weight:600}td.num,th.num{text-align:right;
 font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 10px;border-radius:10px;font-weight:600;color:#fff}
.yes{background:#16a34a}.no{background:#dc2626}
figure{margin:0 0 18px}img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#4b5563;margin-top:4px}
"""


class Figure(NamedTuple):
    png: bytes
    alt: str  # what the image shows, for readers who cannot see it
    caption: str = ""


def _e(value) -> str:
    return html.escape(str(value))


def _img(figure: Figure) -> str:
    width, height = struct.unpack(">II", figure.png[16:24])  # the PNG IHDR chunk
    data = base64.b64encode(figure.png).decode("ascii")
    caption = f"<figcaption>{_e(figure.caption)}</figcaption>" if figure.caption else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(figure.alt)}" '
            f'width="{width}" height="{height}">{caption}</figure>')


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    def cell(tag: str, i: int, value) -> str:
        return f'<{tag} class="num">{_e(value)}</{tag}>' if i in numeric else \
            f"<{tag}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _overview(card: ModelCard) -> str:
    evaluation = card.metrics["evaluation"]
    data, train = card.dataset, card.training
    badge = ('<span class="badge yes">yes</span>' if card.deployable
             else '<span class="badge no">no</span>')
    rows = [
        ["Family", card.model.family or "unknown"],
        ["Parameters", f"{card.model.parameters:,}" if card.model.parameters is not None
         else "unknown"],
        ["Head", card.model.head or "unknown"],
        ["Input", f"{card.input.height}x{card.input.width}x{card.input.channels}"],
        ["Dataset", f"{data['name']}: {data['num_train']} train / {data['num_val']} "
                    f"validation images, {card.num_classes} classes"],
        ["Dataset source", data["source"]],
        ["Training", f"{train['epochs']} epochs in {train['seconds']} s, "
                     f"precision {train['precision']}"],
        ["Validation accuracy", f"{evaluation['accuracy']:.4f}"],
        ["Macro F1", f"{evaluation['macro_f1']:.4f}"],
        ["Created", card.created_at or "unknown"],
        ["Git commit", card.git_commit or "unknown"],
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return (f"<table><tbody>{body}<tr><th>Deployable</th><td>{badge}</td></tr>"
            "</tbody></table>")


def _per_class(card: ModelCard) -> str:
    per_class = card.metrics["evaluation"]["per_class"]
    rows = [[label, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
             m["support"]] for label, m in per_class.items()]
    return _table(["class", "precision", "recall", "F1", "support"], rows, {1, 2, 3, 4})


def _quantization(card: ModelCard) -> str:
    q = card.quantization
    if q is None:
        return ('<p class="note">The model is not quantized yet: run '
                "<code>python -m training quantize ARTIFACT</code>.</p>")
    gate = q.gate
    drops = gate.drop_points
    rows = [[mode + (" (primary)" if mode == q.primary else ""), v.file,
             f"{v.bytes:,}", f"{v.bytes / 1024:.1f}", f"{v.accuracy:.4f}",
             f"{v.agreement:.4f}", f"{drops[mode]:+.3f}",
             f"{v.latency_ms_batch1:.3f}"] for mode, v in q.variants.items()]
    table = _table(["mode", "file", "bytes", "KiB", "accuracy", "agreement with Keras",
                    "drop (points)", "latency ms (batch 1)"], rows, {2, 3, 4, 5, 6, 7})
    verdict = ('<span class="badge yes">passed</span>' if gate.passed
               else '<span class="badge no">failed</span>')
    return (f"<p>Keras accuracy {q.keras_accuracy:.4f}. Gate: {verdict} (int8 may lose at "
            f"most {_e(gate.max_drop_points)} points of top-1 against Keras).</p>{table}")


def render(card: ModelCard, figures: dict[str, list[Figure]], notes: dict[str, str]) -> str:
    tables = {"overview": _overview(card), "per_class": _per_class(card),
              "quantization": _quantization(card)}
    sections = []
    for key, heading in SECTIONS.items():
        parts = [f'<section id="{key}"><h2>{_e(heading)}</h2>']
        if key in notes:
            parts.append(f'<p class="note">{_e(notes[key])}</p>')
        parts.append(tables.get(key, ""))
        parts.extend(map(_img, figures.get(key, [])))
        sections.append("".join(parts) + "</section>")
    nav = "".join(f'<a href="#{key}">{_e(heading)}</a>' for key, heading in SECTIONS.items())
    title = f"Sightline report: {card.name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(card.model.family or 'unknown')} on "
            f"{_e(card.dataset['name'])}, {_e(card.created_at)}</p><nav>{nav}</nav>"
            + "\n".join(sections) + "</main></body></html>\n")
