"""Extraction of links, candidate images and their captions from an HTML page.

What to extract is data (:class:`ExtractionRules`, XPath 1.0 expressions from a site profile
in params.yaml), so a new site needs no code:

* ``links``: expressions that select the href values of links to follow. A link whose path
  matches ``full_size_pattern`` points at an image and is never followed as a page.
* ``images``: expressions that select ``<img>`` elements. When ``full_size_link`` (evaluated
  on the ``<img>``) gives an href that matches ``full_size_pattern`` (a thumbnail wrapped in a
  link to the full-size picture), the candidate is that target; otherwise it is the
  ``image_source`` attribute (normally ``@src``).
* ``captions``: expressions evaluated on the ``<img>`` (figcaption, alt, title), tried in
  order. The first text in which a keyword occurs is the caption and decides the label; when
  none has a keyword, the caption is the first non-empty text and the label stays empty.
  Only an image without any text of its own takes ``page_caption`` (normally the page title),
  so a captioned staff photo on a melanoma page is not labelled melanoma.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import lxml.etree
import lxml.html

from dermcan import xpath_functions  # noqa: F401 - registers json-value() for profile XPaths
from dermcan.keyword_matching import KeywordMatcher


@dataclass(frozen=True)
class ExtractionRules:
    """XPath rules for one site; see the module docstring."""

    links: tuple[str, ...]
    images: tuple[str, ...]
    image_source: str
    full_size_link: str
    full_size_pattern: str
    captions: tuple[str, ...]
    page_caption: str

    def __post_init__(self) -> None:
        for expression in (*self.links, *self.images, self.image_source, self.full_size_link,
                           *self.captions, self.page_caption):
            if not expression:
                continue
            try:
                lxml.etree.XPath(expression)
            except lxml.etree.XPathSyntaxError as error:
                raise ValueError(f"invalid XPath {expression!r} in a crawl profile: {error}") from None
        try:
            re.compile(self.full_size_pattern)
        except re.error as error:
            raise ValueError(
                f"invalid full_size_pattern {self.full_size_pattern!r} in a crawl profile: {error}"
            ) from None

    def is_image_url(self, url: str) -> bool:
        return bool(re.search(self.full_size_pattern, urllib.parse.urlsplit(url).path))


@dataclass(frozen=True)
class ImageCandidate:
    """An image URL found on a page, with the caption and keyword that label it."""

    url: str
    page_url: str
    caption: str
    keyword: str
    language: str
    label: str


@dataclass(frozen=True)
class ParsedPage:
    links: tuple[str, ...]  # absolute http(s) URLs without fragment, in document order, unique
    images: tuple[ImageCandidate, ...]  # in document order, one per URL


def parse_page(
    html: str | bytes, page_url: str, rules: ExtractionRules, matcher: KeywordMatcher
) -> ParsedPage:
    """Extract the links and candidate images of the page at ``page_url``."""
    if not html.strip():
        return ParsedPage(links=(), images=())
    document = _parse_document(html)
    if document is None:
        return ParsedPage(links=(), images=())

    base_hrefs = document.xpath("//base/@href")
    base_url = urllib.parse.urljoin(page_url, str(base_hrefs[0]).strip()) if base_hrefs else page_url

    links: dict[str, None] = {}
    for expression in rules.links:
        for href in _strings(document.xpath(expression)):
            url = absolute_url(base_url, href)
            if url is not None and not rules.is_image_url(url):
                links.setdefault(url, None)

    page_caption = _text(document.xpath(rules.page_caption)) if rules.page_caption else ""
    images: dict[str, ImageCandidate] = {}
    for expression in rules.images:
        for element in document.xpath(expression):
            if not isinstance(element, lxml.html.HtmlElement):
                continue
            url = _image_url(element, base_url, rules)
            if url is None or url in images:
                continue
            texts = [_text(element.xpath(caption)) for caption in rules.captions]
            if not any(texts):
                texts = [page_caption]
            images[url] = _label(url, page_url, texts, matcher)

    return ParsedPage(links=tuple(links), images=tuple(images.values()))


def _parse_document(html: str | bytes) -> Any:
    try:
        return lxml.html.document_fromstring(html)
    except lxml.etree.ParserError:
        return None
    except ValueError:
        # lxml rejects str input with an XML encoding declaration; the same text as bytes parses.
        if isinstance(html, str):
            return _parse_document(html.encode("utf-8"))
        return None


def absolute_url(base_url: str, href: str) -> str | None:
    """Resolve ``href`` against ``base_url``; return None for non-HTTP links (mailto:, data:)."""
    href = href.strip()
    if not href:
        return None
    url = urllib.parse.urldefrag(urllib.parse.urljoin(base_url, href)).url
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return None
    return url


def _image_url(element: Any, base_url: str, rules: ExtractionRules) -> str | None:
    if rules.full_size_link:
        for href in _strings(element.xpath(rules.full_size_link)):
            target = absolute_url(base_url, href)
            if target is not None and rules.is_image_url(target):
                return target
    for source in _strings(element.xpath(rules.image_source)):
        url = absolute_url(base_url, source)
        if url is not None:
            return url
    return None


def _label(url: str, page_url: str, texts: list[str], matcher: KeywordMatcher) -> ImageCandidate:
    for text in texts:
        if not text:
            continue
        match = matcher.match(text)
        if match is not None:
            return ImageCandidate(url, page_url, text, match.keyword, match.language, match.label)
    caption = next((text for text in texts if text), "")
    return ImageCandidate(url, page_url, caption, "", "", "")


def _strings(result: Any) -> list[str]:
    if isinstance(result, str):
        return [result]
    if isinstance(result, list):
        return [str(item) for item in result if isinstance(item, str)]
    return []


def _text(result: Any) -> str:
    """Return the text of an XPath result (string, attribute values or elements), whitespace-collapsed."""
    if isinstance(result, str):
        pieces = [result]
    elif isinstance(result, list):
        pieces = [
            item if isinstance(item, str) else item.text_content()
            for item in result
            if isinstance(item, (str, lxml.html.HtmlElement))
        ]
    else:
        pieces = []
    return " ".join(" ".join(pieces).split())
