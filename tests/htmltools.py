"""Read rendered report pages back with the standard library's HTML parser, for reporter tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[Element | str] = field(default_factory=list)
    parent: Element | None = None

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list[Element]:
        return [e for e in self.iter()
                if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs) -> Element:
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}> in the page"
        return found[0]

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), parent=self.stack[-1])
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, dict(attrs), parent=self.stack[-1]))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return
        raise AssertionError(f"</{tag}> closes nothing")

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(page: str) -> Element:
    """Parse a page into a tree of Elements; unbalanced end tags fail the test."""
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def external_refs(root: Element) -> list[str]:
    """Every src/href (and SVG xlink:href) that would reach the network."""
    bad = []
    for element in root.iter():
        for name in ("src", "href", "xlink:href", "action", "poster", "srcset"):
            value = (element.attrs.get(name) or "").strip().lower()
            if value.startswith(("http://", "https://", "//", "ftp://")):
                bad.append(f"<{element.tag} {name}={value}>")
    return bad


def page_data(page: str) -> dict:
    """The JSON data block the page's script lays out the results table and details from."""
    import json

    root = parse(page)
    (block,) = root.find_all("script", id="gradaudit-data")
    assert block.attrs.get("type") == "application/json"
    return json.loads(block.text)


def text_of(parts: list[str]) -> str:
    """A message as the data holds it (text, code, text, ... pieces) as plain text."""
    return "".join(parts)
