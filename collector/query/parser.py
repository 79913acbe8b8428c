"""Turn one line of the query protocol into a Command: verb, positional args, options, filters.

Tokens are separated by runs of spaces or tabs. Double quotes group characters (spaces
included) and may appear anywhere inside a token: `extra.page="/a b"` is one token. A
backslash escapes the next character, inside or outside quotes: `\\n` and `\\t` stand for
a newline and a tab, any other escaped character for itself. Quoted and escaped characters
are never syntax: a quoted `=` does not make a key=value, a quoted `,` does not split a list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collector.query.errors import QueryError
from collector.query.model import Filter

FILTER_FIELDS = frozenset({"action", "user", "value"})
EXTRA_PREFIX = "extra."

_BLANKS = " \t"
_ESCAPES = {"n": "\n", "t": "\t"}
# SQL carries its own `=` and quotes, so its rest of line is never tokenized.
_SQL_LINE = re.compile(r"[ \t]*sql(?:[ \t]+(?P<rest>.*))?", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Token:
    """One word of a line, after quotes and escapes are resolved.

    `quoted[i]` tells whether `text[i]` came from inside quotes or from an escape, so the
    parser can tell a literal `=` or `,` from a separator. `column` is 1-based.
    """

    text: str
    quoted: tuple[bool, ...]
    column: int

    def find_unquoted(self, char: str) -> int:
        """Index of the first unquoted `char`, or -1."""
        for index, (text_char, quoted) in enumerate(zip(self.text, self.quoted, strict=True)):
            if text_char == char and not quoted:
                return index
        return -1

    def is_unquoted(self, index: int, char: str) -> bool:
        return 0 <= index < len(self.text) and self.text[index] == char and not self.quoted[index]

    def tail(self, start: int) -> Token:
        return Token(self.text[start:], self.quoted[start:], self.column + start)

    def split_unquoted(self, separator: str) -> list[str]:
        parts: list[str] = []
        current: list[str] = []
        for text_char, quoted in zip(self.text, self.quoted, strict=True):
            if text_char == separator and not quoted:
                parts.append("".join(current))
                current = []
            else:
                current.append(text_char)
        parts.append("".join(current))
        return parts


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[str, ...]
    options: dict[str, str]
    filters: tuple[Filter, ...]


def tokenize(line: str) -> list[Token]:
    """Split a line into tokens; a trailing CR (or CRLF) is dropped."""
    line = _strip_line_end(line)
    tokens: list[Token] = []
    position = _skip_blanks(line, 0)
    while position < len(line):
        token, position = _read_token(line, position)
        tokens.append(token)
        position = _skip_blanks(line, position)
    return tokens


def parse(line: str) -> Command | None:
    """The command on `line`, or None for a blank line."""
    line = _strip_line_end(line)
    sql = _SQL_LINE.fullmatch(line)
    if sql is not None:
        return Command(verb="SQL", args=(sql.group("rest") or "",), options={}, filters=())
    tokens = tokenize(line)
    if not tokens:
        return None
    verb = tokens[0].text.upper()
    if not verb:
        raise QueryError("SYNTAX", "missing command verb at column 1")
    args: list[str] = []
    options: dict[str, str] = {}
    filters: list[Filter] = []
    for token in tokens[1:]:
        if token.find_unquoted("=") < 0:
            args.append(token.text)
        else:
            _add_key_value(token, options, filters)
    return Command(verb=verb, args=tuple(args), options=options, filters=tuple(filters))


def _strip_line_end(line: str) -> str:
    return line.removesuffix("\n").removesuffix("\r")


def _skip_blanks(line: str, position: int) -> int:
    while position < len(line) and line[position] in _BLANKS:
        position += 1
    return position


def _read_token(line: str, start: int) -> tuple[Token, int]:
    """The token starting at `start` and the position just after it."""
    chars: list[str] = []
    quoted: list[bool] = []
    open_quote: int | None = None
    position = start
    while position < len(line):
        char = line[position]
        if char == "\\":
            chars.append(_escaped_char(line, position))
            quoted.append(True)
            position += 2
        elif char == '"':
            open_quote = position if open_quote is None else None
            position += 1
        elif char in _BLANKS and open_quote is None:
            break
        else:
            chars.append(char)
            quoted.append(open_quote is not None)
            position += 1
    if open_quote is not None:
        raise QueryError("SYNTAX", f"unbalanced quote at column {open_quote + 1}")
    return Token("".join(chars), tuple(quoted), start + 1), position


def _escaped_char(line: str, backslash: int) -> str:
    if backslash + 1 == len(line):
        raise QueryError("SYNTAX", f"trailing backslash at column {backslash + 1}")
    char = line[backslash + 1]
    return _ESCAPES.get(char, char)


def _add_key_value(token: Token, options: dict[str, str], filters: list[Filter]) -> None:
    equals = token.find_unquoted("=")
    negated = token.is_unquoted(equals - 1, "!")
    key = _normalize_key(token.text[: equals - 1 if negated else equals])
    if not key:
        where = f"{token.text!r} (column {token.column})"
        raise QueryError("ARG", f"missing name before '=' in {where}")
    value = token.tail(equals + 1)
    if _is_filter_field(key):
        filters.append(Filter(field=key, negated=negated, values=_filter_values(key, value)))
        return
    if negated:
        raise QueryError("ARG", f"option '{key}' cannot be negated (only filters take '!=')")
    if key in options:
        raise QueryError("ARG", f"option '{key}' given twice")
    if not value.text:
        raise QueryError("ARG", f"empty value for {key}")
    options[key] = value.text


def _normalize_key(raw_key: str) -> str:
    """Lower-case a key, except the path of an `extra.` key: JSON keys are case-sensitive."""
    if raw_key.lower().startswith(EXTRA_PREFIX):
        return EXTRA_PREFIX + raw_key[len(EXTRA_PREFIX) :]
    return raw_key.lower()


def _is_filter_field(key: str) -> bool:
    if key in FILTER_FIELDS:
        return True
    if not key.startswith(EXTRA_PREFIX):
        return False
    path = key[len(EXTRA_PREFIX) :]
    if not path or "" in path.split("."):
        raise QueryError(
            "ARG", f"bad field '{key}': expected extra.NAME or extra.NAME.NAME..., no empty names"
        )
    return True


def _filter_values(field: str, value: Token) -> tuple[str, ...]:
    if not value.text:
        raise QueryError("ARG", f"empty value for {field}")
    values = value.split_unquoted(",")
    if "" in values:
        raise QueryError(
            "ARG", f"empty element in the list for {field}: {value.text!r} (quote a literal comma)"
        )
    return tuple(values)
