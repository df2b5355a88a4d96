"""Reading what `selfplay compare` wrote, for the unit and the browser tests: the metric cells
of the report's table (from the file or from a browser's rendered DOM) and PNG headers."""

import struct
from html.parser import HTMLParser
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images, self.body, self._key, self._text = {}, [], {}, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-metric" in attrs:
            self._key, self._text = (attrs["data-run"], attrs["data-metric"], int(attrs["data-iteration"])), []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "body":
            self.body = attrs

    def handle_data(self, data):
        if self._key:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._key:
            self.cells[self._key] = "".join(self._text)
            self._key = None


def read_report(html: str) -> _Cells:
    """.cells {(run label, metric, iteration): text}, .images [img attributes], .body {attributes}."""
    parser = _Cells()
    parser.feed(html)
    return parser


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature."""
    data = Path(path).read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])
