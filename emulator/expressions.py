"""Data Pipeline expressions: the ``#{...}`` parts of field values, evaluated before a task is handed out.

Grammar inside ``#{`` and ``}`` (docs/expressions.md has the full list and examples)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := ('-' | '+') unary | power
    power   := primary ('^' unary)?
    primary := NUMBER | STRING | call | NAME | '(' expr ')'
    call    := FUNCTION '(' [expr (',' expr)*] ')'
    NAME    := ['@' | '*'] IDENT ('.' ['@' | '*'] IDENT)*     e.g. myParam, @scheduledStartTime, input.directoryPath

Values are strings, integers (Java ``long``), doubles, datetimes (aware UTC) and
:class:`~emulator.periods.Period`. A string that reads ``YYYY-MM-DDTHH:MM:SS`` is a DateTime
wherever a function wants one, and a numeric string is a number wherever a number is wanted.
``+`` concatenates when either side is a string. Substituted into text, a DateTime prints as
``YYYY-MM-DDTHH:MM:SS`` and a double as Java prints it (``0.5``, ``4.0``, ``1.0E10``).

Error messages quote the expression as written but never a value a name resolved to, so a
masked parameter (``*myPassword``) cannot leak through one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from emulator.jodatime import (
    FUNCTIONS,
    LONG_MAX,
    LONG_MIN,
    Function,
    Kind,
    Value,
    java_arithmetic,
    java_double_text,
    java_long,
)
from emulator.periods import format_datetime, parse_datetime

__all__ = [
    "FUNCTIONS",
    "OPERATORS",
    "ExpressionError",
    "Function",
    "Kind",
    "Scope",
    "Value",
    "check",
    "evaluate",
    "names",
    "parameter_value",
]

#: The operators, loosest first; ``^`` binds tightest and to the right.
OPERATORS = ("+", "-", "*", "/", "^")

_MAX_DEPTH = 64
_INTEGER_RE = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
_TOKEN_RES = (
    ("space", re.compile(r"\s+", re.ASCII)),
    ("number", re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+", re.ASCII)),
    ("name", re.compile(r"@?[A-Za-z_][A-Za-z0-9_]*(?:\.[@*]?[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)),
    ("string", re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)),
    ("op", re.compile(r"[-+*/^(),]")),
)
# ``*`` starts a masked name (``*myPassword``) only where an operand is expected; elsewhere it multiplies.
_MASKED_NAME_RE = re.compile(r"\*[A-Za-z_][A-Za-z0-9_]*(?:\.[@*]?[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message says what and where.

    Attributes:
        detail: What is wrong, e.g. ``"unknown function 'fromat'"``.
        position: 0-based offset in the field value, or ``None`` when not tied to one place.
    """

    def __init__(self, detail: str, position: int | None = None, source: str = "") -> None:
        where = "" if position is None else f" at position {position}"
        shown = source if len(source) <= 80 else source[:77] + "..."
        super().__init__(f"{detail}{where}" + (f" in {shown!r}" if shown else ""))
        self.detail = detail
        self.position = position


def _no_references(ref: str, name: str) -> Value | None:
    return None


@dataclass(frozen=True)
class Scope:
    """What names in an expression resolve to.

    Attributes:
        lookup: A field of the object itself, a runtime field (``@scheduledStartTime``) or a
            parameter (``myParam``, ``*myPassword`` with its star); ``None`` when unknown.
        follow: ``(reference field, rest)`` for dotted names: ``input.directoryPath`` asks
            ``("input", "directoryPath")``, ``node.output.directoryPath`` asks
            ``("node", "output.directoryPath")``; ``None`` when unknown.
    """

    lookup: Callable[[str], Value | None]
    follow: Callable[[str, str], Value | None] = _no_references

    @classmethod
    def of(cls, names: Mapping[str, Value], references: Mapping[str, Mapping[str, Value]] | None = None) -> Scope:
        """A scope over fixed values: ``names`` for plain names, ``references[ref][rest]`` for dotted ones."""
        refs = references or {}
        return cls(names.get, lambda ref, rest: refs.get(ref, {}).get(rest))


def evaluate(text: str, scope: Scope) -> str:
    """Replace every ``#{...}`` in ``text`` with its value; text outside expressions is kept as is.

    Raises:
        ExpressionError: an expression is malformed, calls an unknown function, names something
            ``scope`` does not know, or passes a function the wrong kind of value.
    """
    if "#{" not in text:
        return text
    return "".join(part if isinstance(part, str) else _render(_value(part, scope)) for part in _split(text))


def check(text: str) -> list[str]:
    """Errors Data Pipeline would find without running anything: syntax, unknown functions, arity, literal types.

    Names are not resolved, so a reference to a missing field is not reported here.
    """
    if "#{" not in text:
        return []
    try:
        parts = _split(text)
    except ExpressionError as exc:
        return [str(exc)]
    errors = []
    for part in parts:
        if not isinstance(part, str):
            try:
                _run(part, None)
            except ExpressionError as exc:
                errors.append(str(exc))
    return errors


def names(text: str) -> list[str]:
    """The names the expressions in ``text`` refer to, as written (``myParam``, ``@id``, ``input.directoryPath``).

    In order of appearance, without repeats; function names are not included. An expression
    that does not parse contributes nothing (``check`` reports it).
    """
    if "#{" not in text:
        return []
    try:
        parts = _split(text)
    except ExpressionError:
        return []
    found: dict[str, None] = {}
    for part in parts:
        if isinstance(part, str):
            continue
        try:
            tree = _Parser(part).parse()
        except _Problem:
            continue
        pending: list[_Node] = [tree]
        while pending:
            node = pending.pop()
            if isinstance(node, _Name):
                found.setdefault(node.path)
            elif isinstance(node, _Call):
                pending.extend(reversed(node.args))
            elif isinstance(node, _Unary):
                pending.append(node.operand)
            elif isinstance(node, _Chain):
                pending.extend(reversed([node.first, *(operand for _, _, operand in node.rest)]))
    return list(found)


def parameter_value(text: str, parameter_type: str = "String") -> Value:
    """A parameter value typed as its declaration says (``Integer`` → int, ``Double`` → float), else the text."""
    if parameter_type == "Integer" and _INTEGER_RE.fullmatch(text.strip()) and LONG_MIN <= int(text) <= LONG_MAX:
        return int(text)
    if parameter_type == "Double" and _NUMBER_RE.fullmatch(text.strip()):
        return float(text)
    return text


# --- Splitting text into literal parts and expressions --------------------------------------


@dataclass(frozen=True)
class _Source:
    body: str
    offset: int  # where ``body`` starts in the field value
    text: str  # ``#{...}`` as written, for messages


class _Problem(Exception):
    def __init__(self, detail: str, position: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.position = position


def _split(text: str) -> list[str | _Source]:
    parts: list[str | _Source] = []
    i = 0
    while (start := text.find("#{", i)) >= 0:
        parts.append(text[i:start])
        end = _closing_brace(text, start)
        parts.append(_Source(text[start + 2 : end], start + 2, text[start : end + 1]))
        i = end + 1
    parts.append(text[i:])
    return parts


def _closing_brace(text: str, start: int) -> int:
    quote = ""
    i = start + 2
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "}":
            return i
        i += 1
    missing = f"closing {quote} of a string and '}}'" if quote else "'}'"
    raise ExpressionError(f"unterminated expression: no {missing}", start, text[start:])


def _run(source: _Source, scope: Scope | None) -> Value | _Unknown:
    try:
        return _Evaluator(scope).eval(_Parser(source).parse())
    except _Problem as exc:
        raise ExpressionError(exc.detail, exc.position, source.text) from None


def _value(source: _Source, scope: Scope) -> Value:
    value = _run(source, scope)
    assert not isinstance(value, _Unknown)  # only check() leaves names unresolved
    return value


# --- Parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # number, name, string, op, end
    text: str
    pos: int


@dataclass(frozen=True)
class _Literal:
    value: Value
    pos: int


@dataclass(frozen=True)
class _Name:
    path: str
    pos: int


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[_Node, ...]
    pos: int


@dataclass(frozen=True)
class _Unary:
    op: str
    operand: _Node
    pos: int


@dataclass(frozen=True)
class _Chain:
    """``first op1 x1 op2 x2 ...`` evaluated left to right, so long sums do not nest deeply."""

    first: _Node
    rest: tuple[tuple[str, int, _Node], ...]  # (operator, its position, operand)

    @property
    def pos(self) -> int:
        return self.first.pos


_Node: TypeAlias = "_Literal | _Name | _Call | _Unary | _Chain"


def _tokenize(source: _Source) -> list[_Token]:
    tokens: list[_Token] = []
    body, i = source.body, 0
    while i < len(body):
        operand_expected = not tokens or (tokens[-1].kind == "op" and tokens[-1].text != ")")
        found = _match_token(body, i, operand_expected)
        if found is None:
            what = "an unterminated string" if body[i] in "'\"" else f"unexpected character {body[i]!r}"
            raise _Problem(what, source.offset + i)
        kind, match = found
        if kind != "space":
            tokens.append(_Token(kind, match.group(), source.offset + i))
        i = match.end()
    tokens.append(_Token("end", "", source.offset + len(body)))
    return tokens


def _match_token(body: str, i: int, operand_expected: bool) -> tuple[str, re.Match[str]] | None:
    if operand_expected and (match := _MASKED_NAME_RE.match(body, i)):
        return "name", match
    for kind, pattern in _TOKEN_RES:
        if match := pattern.match(body, i):
            return kind, match
    return None


class _Parser:
    def __init__(self, source: _Source) -> None:
        self._tokens = _tokenize(source)
        self._i = 0
        self._depth = 0

    def parse(self) -> _Node:
        if self._peek().kind == "end":
            raise _Problem("empty expression", self._peek().pos)
        node = self._expr()
        if self._peek().kind != "end":
            raise _Problem(f"expected an operator or '}}', found {self._peek().text!r}", self._peek().pos)
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _take(self) -> _Token:
        token = self._tokens[self._i]
        self._i += 1
        return token

    def _at(self, *ops: str) -> bool:
        return self._peek().kind == "op" and self._peek().text in ops

    def _expr(self) -> _Node:
        return self._chain(self._term, "+", "-")

    def _term(self) -> _Node:
        return self._chain(self._unary, "*", "/")

    def _chain(self, operand: Callable[[], _Node], *ops: str) -> _Node:
        first = operand()
        rest = []
        while self._at(*ops):
            op = self._take()
            rest.append((op.text, op.pos, operand()))
        return _Chain(first, tuple(rest)) if rest else first

    def _unary(self) -> _Node:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise _Problem(f"expression nested more than {_MAX_DEPTH} levels deep", self._peek().pos)
        if self._at("-", "+"):
            op = self._take()
            node: _Node = _Unary(op.text, self._unary(), op.pos)
        else:
            node = self._primary()
            if self._at("^"):
                op = self._take()
                node = _Chain(node, (("^", op.pos, self._unary()),))
        self._depth -= 1
        return node

    def _primary(self) -> _Node:
        token = self._take()
        if token.kind == "number":
            return _Literal(float(token.text) if "." in token.text else _parse_long(token.text, token.pos), token.pos)
        if token.kind == "string":
            return _Literal(re.sub(r"\\(['\"\\])", r"\1", token.text[1:-1]), token.pos)
        if token.kind == "name" and self._at("("):
            return self._call(token)
        if token.kind == "name":
            return _Name(token.text, token.pos)
        if token.kind == "op" and token.text == "(":
            node = self._expr()
            self._expect(")", "to close '('")
            return node
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        raise _Problem(f"expected a value, found {found}", token.pos)

    def _call(self, name: _Token) -> _Call:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.text):
            raise _Problem(f"{name.text!r} cannot be called: only functions take arguments", name.pos)
        self._take()  # (
        args: list[_Node] = []
        if not self._at(")"):
            args.append(self._expr())
            while self._at(","):
                self._take()
                args.append(self._expr())
        self._expect(")", f"after the arguments of {name.text}()")
        return _Call(name.text, tuple(args), name.pos)

    def _expect(self, op: str, why: str) -> None:
        if not self._at(op):
            token = self._peek()
            found = "the end of the expression" if token.kind == "end" else repr(token.text)
            raise _Problem(f"expected {op!r} {why}, found {found}", token.pos)
        self._take()


# --- Evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unknown:
    """A value ``check()`` cannot know (a name), with its kind when a function's signature tells it."""

    kind: Kind | None = None


class _Evaluator:
    """Evaluates a tree; with no scope (``check()``), names are unknown and only types are checked."""

    def __init__(self, scope: Scope | None) -> None:
        self._scope = scope

    def eval(self, node: _Node) -> Value | _Unknown:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Name):
            return self._resolve(node)
        if isinstance(node, _Call):
            return self._call(node)
        if isinstance(node, _Unary):
            number = _as_number(self.eval(node.operand), f"unary {node.op!r}", node.pos)
            if isinstance(number, _Unknown) or node.op == "+":
                return number
            return -number if isinstance(number, float) else java_long(-number)
        value = self.eval(node.first)
        for op, pos, operand in node.rest:
            value = _binary(op, value, self.eval(operand), pos)
        return value

    def _resolve(self, node: _Name) -> Value | _Unknown:
        if self._scope is None:
            return _Unknown()
        head, _, rest = node.path.partition(".")
        value = self._scope.follow(head, rest) if rest else self._scope.lookup(head)
        if value is None:
            raise _Problem(f"unknown name {node.path!r}", node.pos)
        return value

    def _call(self, node: _Call) -> Value | _Unknown:
        spec = FUNCTIONS.get(node.name)
        if spec is None:
            close = difflib.get_close_matches(node.name, FUNCTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Problem(f"unknown function {node.name!r}{hint}", node.pos)
        if len(node.args) != len(spec.params):
            raise _Problem(f"{spec.signature} takes {len(spec.params)} argument(s), got {len(node.args)}", node.pos)
        args = [
            _convert(self.eval(arg), kind, f"{spec.name}() argument {i} ({name})", arg.pos)
            for i, (arg, (name, kind)) in enumerate(zip(node.args, spec.params, strict=True), start=1)
        ]
        try:
            if spec.static_check is not None:
                spec.static_check(args)
            if any(isinstance(arg, _Unknown) for arg in args):
                return _Unknown(spec.returns)
            return spec.impl(*args)
        except (ValueError, OverflowError) as exc:
            raise _Problem(f"{spec.name}(): {exc}", node.pos) from None


def _kind(value: Value | _Unknown) -> Kind | None:
    if isinstance(value, _Unknown):
        return value.kind
    if isinstance(value, str):
        return Kind.STRING
    if isinstance(value, int):
        return Kind.INTEGER
    if isinstance(value, float):
        return Kind.DOUBLE
    return Kind.DATETIME if isinstance(value, datetime) else Kind.PERIOD


_A = {Kind.STRING: "a string", Kind.INTEGER: "an integer", Kind.DOUBLE: "a double"}


def _a(kind: Kind) -> str:
    return _A.get(kind, f"a {kind}")


def _convert(value: Value | _Unknown, kind: Kind, what: str, pos: int) -> Value | _Unknown:
    have = _kind(value)
    if isinstance(value, _Unknown):
        if have in (None, kind, Kind.STRING) or (have is Kind.INTEGER and kind is Kind.DOUBLE):
            return _Unknown(kind)
    elif have is kind:
        return value
    elif kind is Kind.DATETIME and isinstance(value, str):
        try:
            return parse_datetime(value)
        except ValueError:
            raise _Problem(f"{what} must be a DateTime: got a string that is not YYYY-MM-DDTHH:MM:SS", pos) from None
    elif kind is Kind.INTEGER and isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()):
        return _parse_long(value, pos)
    raise _Problem(f"{what} must be {_a(kind)}, got {_a(have) if have else 'an unknown value'}", pos)


def _as_number(value: Value | _Unknown, what: str, pos: int) -> int | float | _Unknown:
    if isinstance(value, _Unknown):
        if value.kind in (Kind.DATETIME, Kind.PERIOD):
            raise _Problem(f"{what} needs numbers, got {_a(value.kind)}", pos)
        return value if value.kind in (Kind.INTEGER, Kind.DOUBLE) else _Unknown()
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return _parse_long(value, pos) if _INTEGER_RE.fullmatch(value.strip()) else float(value)
    kind = _kind(value)
    detail = "a string that is not a number" if kind is Kind.STRING else _a(kind or Kind.STRING)
    raise _Problem(f"{what} needs numbers, got {detail}", pos)


def _binary(op: str, left: Value | _Unknown, right: Value | _Unknown, pos: int) -> Value | _Unknown:
    if op == "+" and Kind.STRING in (_kind(left), _kind(right)):
        if isinstance(left, _Unknown) or isinstance(right, _Unknown):
            return _Unknown(Kind.STRING)
        return _render(left) + _render(right)
    if op == "+" and None in (_kind(left), _kind(right)):
        return _Unknown()  # an unknown name may be a string: concatenation or addition
    a, b = _as_number(left, repr(op), pos), _as_number(right, repr(op), pos)
    if isinstance(a, _Unknown) or isinstance(b, _Unknown):
        kinds = {_kind(a), _kind(b)}
        if op == "^" or Kind.DOUBLE in kinds:
            return _Unknown(Kind.DOUBLE)
        return _Unknown(Kind.INTEGER if kinds == {Kind.INTEGER} else None)
    try:
        return java_arithmetic(op, a, b)
    except ZeroDivisionError:
        raise _Problem("integer division by zero", pos) from None


def _parse_long(text: str, pos: int) -> int:
    """A whole number that must fit a Java ``long``; the digit count is checked before ``int()`` sees it."""
    stripped = text.strip()
    digits = stripped.lstrip("+-").lstrip("0") or "0"
    n = int(("-" if stripped.startswith("-") else "") + digits) if len(digits) <= 19 else None
    if n is None or not LONG_MIN <= n <= LONG_MAX:
        raise _Problem("integer out of range for a 64-bit long", pos)
    return n


def _render(value: Value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, float):
        return java_double_text(value)
    return str(value)
