"""Protocol-buffer text format, the subset Triton's `config.pbtxt` is written in (pure).

    message := field*
    field   := NAME ":" value | NAME ":"? "{" message "}" | NAME ":" "[" value ("," value)* "]"
    value   := NUMBER | STRING | IDENT (an enum or true/false) | "{" message "}"

Fields may end in "," or ";"; "#" starts a comment. A message parses to a dict from field name to
the list of its values (every field may repeat: `input [...]` and `input {...} input {...}` read
the same); nested messages are dicts again. Errors give the line and column.
"""

from __future__ import annotations

import re
from typing import Any

Message = dict[str, list[Any]]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]:,;<>])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
_CLOSE = {"{": "}", "<": ">"}


class PbtxtError(ValueError):
    """Text that is not protobuf text format; the message gives line and column."""


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[tuple[str, str, int]] = []  # (kind, text, offset)
        offset = 0
        while offset < len(text):
            match = _TOKEN.match(text, offset)
            if match is None:
                raise PbtxtError(f"{self.where(offset)}: unexpected {text[offset]!r}")
            kind = match.lastgroup or ""
            if kind != "space":
                self.items.append((kind, match.group(), offset))
            offset = match.end()
        self.i = 0

    def where(self, offset: int) -> str:
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return f"line {line}, column {column}"

    def peek(self) -> tuple[str, str, int] | None:
        return self.items[self.i] if self.i < len(self.items) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise PbtxtError(f"{self.where(len(self.text))}: unexpected end of text")
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        kind, got, offset = self.take()
        if got != text:
            raise PbtxtError(f"{self.where(offset)}: expected {text!r}, found {got!r}")


def parse(text: str) -> Message:
    tokens = _Tokens(text)
    message = _message(tokens, closing=None)
    return message


def _message(tokens: _Tokens, closing: str | None) -> Message:
    fields: Message = {}
    while True:
        token = tokens.peek()
        if token is None:
            if closing is not None:
                raise PbtxtError(f"{tokens.where(len(tokens.text))}: missing {closing!r}")
            return fields
        kind, text, offset = token
        if closing is not None and text == closing:
            tokens.take()
            return fields
        if kind != "ident":
            raise PbtxtError(f"{tokens.where(offset)}: expected a field name, found {text!r}")
        tokens.take()
        separated = False
        after = tokens.peek()
        if after is not None and after[1] == ":":
            tokens.take()
            separated = True
        after = tokens.peek()
        if after is not None and after[1] == "[":
            tokens.take()
            values = _list(tokens)
        elif separated or (after is not None and after[1] in _CLOSE):
            values = [_value(tokens)]
        else:
            where = tokens.where(after[2] if after else len(tokens.text))
            raise PbtxtError(f"{where}: expected ':' or '{{' after field {text!r}")
        fields.setdefault(text, []).extend(values)
        after = tokens.peek()
        if after is not None and after[1] in (",", ";"):
            tokens.take()


def _list(tokens: _Tokens) -> list[Any]:
    values: list[Any] = []
    token = tokens.peek()
    if token is not None and token[1] == "]":
        tokens.take()
        return values
    while True:
        values.append(_value(tokens))
        kind, text, offset = tokens.take()
        if text == "]":
            return values
        if text != ",":
            raise PbtxtError(f"{tokens.where(offset)}: expected ',' or ']', found {text!r}")


def _value(tokens: _Tokens) -> Any:
    kind, text, offset = tokens.take()
    if text in _CLOSE:
        return _message(tokens, closing=_CLOSE[text])
    if kind == "string":
        return _unquote(text[1:-1], tokens.where(offset))
    if kind == "number":
        body = text.rstrip("fF")
        is_float = any(c in body for c in ".eE") or body != text
        return float(body) if is_float else int(body)
    if kind == "ident":
        return {"true": True, "True": True, "false": False, "False": False}.get(text, Ident(text))
    raise PbtxtError(f"{tokens.where(offset)}: expected a value, found {text!r}")


class Ident(str):
    """An enum value or other bare identifier (TYPE_FP32, KIND_CPU), as opposed to a string."""


def _unquote(body: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise PbtxtError(f"{where}: unsupported escape \\{escaped} in a string")
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)
