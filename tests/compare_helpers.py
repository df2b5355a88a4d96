"""Reading what `selfplay compare` wrote, for the unit and the browser tests: the metric cells
of the report's table and its headline panel (from the file or from a browser's rendered DOM),
its images and sparklines, and PNG headers."""

import struct
from html.parser import HTMLParser
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images, self.body, self._key, self._text = {}, [], {}, None, []
        self.headline, self.headline_rows, self.sparklines = {}, [], []
        self._cell_attrs = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-metric" in attrs:
            iteration = attrs["data-iteration"]
            self._key = (attrs["data-run"], attrs["data-metric"], int(iteration) if iteration.isdigit() else iteration)
            self._text = []
        elif tag == "td" and "data-headline-metric" in attrs:
            self._key, self._text = ("headline", attrs["data-headline-run"], attrs["data-headline-metric"]), []
            self._cell_attrs = attrs
        elif tag == "tr" and "data-run" in attrs:
            self.headline_rows.append(attrs["data-run"])
        elif tag == "svg" and "spark" in attrs.get("class", ""):
            self.sparklines.append((self._key, attrs))
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "body":
            self.body = attrs

    def handle_data(self, data):
        if self._key:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._key and self._key[0] == "headline":
            self.headline[self._key[1:]] = {**self._cell_attrs, "text": "".join(self._text)}
            self._key = None
        elif tag == "td" and self._key:
            self.cells[self._key] = "".join(self._text)
            self._key = None


def read_report(html: str) -> _Cells:
    """.cells {(run label, metric, iteration or "all"): text}, .headline {(run label, metric): td
    attributes and "text"}, .headline_rows [run labels in order], .sparklines [((_, run, metric),
    svg attributes)], .images [img attributes], .body {attributes}."""
    parser = _Cells()
    parser.feed(html)
    return parser


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature."""
    data = Path(path).read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])
