"""The verbs of the query port, each declared beside its handler:

    @verb("PING", usage="PING", summary="answers OK PONG")
    async def ping(ctx: Context, session: Session, command: Command) -> Reply: ...

A declaration names the options the verb takes (anything else is `ERR ARG`, checked here
before the handler runs), whether it is open before AUTH, and an example for `HELP VERB`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from collector.query.context import Context, Session
from collector.query.errors import QueryError
from collector.query.output import Reply
from collector.query.parser import Command

Handler = Callable[[Context, Session, Command], Awaitable[Reply]]

ANY_OPTIONS = None  # the verb reads its own options


@dataclass(frozen=True)
class Verb:
    name: str
    handler: Handler
    usage: str
    summary: str
    options: tuple[str, ...] | None = ()
    example: str = ""
    open: bool = False  # answered before AUTH
    own_format: bool = False  # format= is the verb's own (not text|json)

    def check_options(self, command: Command) -> None:
        if self.options is None:
            return
        unknown = sorted(set(command.options) - set(self.options) - {"format"})
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise QueryError(
                "ARG", f"{command.verb} does not take {unknown[0]}= (options: {allowed})"
            )


VERBS: dict[str, Verb] = {}


def verb(
    name: str,
    *,
    usage: str,
    summary: str,
    options: tuple[str, ...] | None = (),
    example: str = "",
    open: bool = False,
    own_format: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in VERBS:
            raise ValueError(f"verb {name} is declared twice")
        VERBS[name] = Verb(name, handler, usage, summary, options, example, open, own_format)
        return handler

    return register


def find(name: str) -> Verb:
    found = VERBS.get(name)
    if found is None:
        raise QueryError("UNKNOWN", f"unknown verb {name}; try HELP")
    return found
