"""The query line parser: tokens, quoting, options versus filters, and its errors."""

from __future__ import annotations

import pytest

from collector.query.errors import QueryError
from collector.query.parser import Command, Filter, Token, parse, tokenize


def parsed(line: str) -> Command:
    command = parse(line)
    assert command is not None
    return command


def texts(line: str) -> list[str]:
    return [token.text for token in tokenize(line)]


def error_of(line: str) -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse(line)
    return caught.value


# --- verbs and positional args ---


@pytest.mark.parametrize("line", ["count", "COUNT", "Count", "  cOuNt  "])
def test_verb_is_case_insensitive_and_upper_cased(line: str) -> None:
    assert parsed(line) == Command(verb="COUNT", args=(), options={}, filters=())


def test_positional_args_keep_order_and_case() -> None:
    command = parsed("TOP action n=5")
    assert command.verb == "TOP"
    assert command.args == ("action",)
    assert command.options == {"n": "5"}


def test_quoted_positional_arg_keeps_its_spaces() -> None:
    assert parsed('USER "user 42"').args == ("user 42",)


def test_positional_args_are_verbatim() -> None:
    assert parsed("X Foo BAR *baz*").args == ("Foo", "BAR", "*baz*")


def test_empty_quoted_positional_arg_is_kept() -> None:
    assert parsed('USER ""').args == ("",)


@pytest.mark.parametrize("line", ["", "   ", "\t \t", "\r", "\r\n", "  \r"])
def test_blank_line_is_none(line: str) -> None:
    assert parse(line) is None


def test_empty_quoted_verb_is_a_syntax_error() -> None:
    error = error_of('"" action=x')
    assert error.error_class == "SYNTAX"
    assert "verb" in error.message


# --- tokenizing ---


def test_runs_of_spaces_and_tabs_separate_tokens() -> None:
    assert texts("a  b\t\tc \t d") == ["a", "b", "c", "d"]


def test_trailing_cr_is_stripped() -> None:
    assert texts("COUNT action=x\r") == ["COUNT", "action=x"]
    assert parsed("COUNT action=x\r\n").filters == (Filter("action", False, ("x",)),)


def test_cr_inside_a_line_is_kept() -> None:
    assert texts("a\rb") == ["a\rb"]


def test_quotes_inside_a_token_join_into_one_token() -> None:
    assert texts('COUNT extra.page="/a b" x') == ["COUNT", "extra.page=/a b", "x"]


def test_adjacent_quoted_and_bare_parts_join() -> None:
    assert texts('ab"c d"ef""g') == ["abc defg"]


def test_quoted_blanks_are_kept_verbatim() -> None:
    assert texts('"  a\tb  "') == ["  a\tb  "]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"line\nbreak"', "line\nbreak"),
        (r'"tab\there"', "tab\there"),
        (r'"\q\=\,"', "q=,"),
        (r"bare\ space", "bare space"),
        (r"bare\"quote", 'bare"quote'),
        (r"\n\t", "\n\t"),
    ],
)
def test_backslash_escapes(line: str, text: str) -> None:
    assert texts(line) == [text]


def test_token_records_quoted_characters_and_column() -> None:
    first, second = tokenize(r'AB  c"=d"\,')
    assert first == Token("AB", (False, False), 1)
    assert second == Token("c=d,", (False, True, True, True), 5)


@pytest.mark.parametrize(
    ("line", "column"),
    [
        ('"abc', 1),
        ('COUNT action="x', 14),
        ('COUNT "a" "b', 11),
        ('a"b"c"d', 6),
        (r'"a\"', 1),
    ],
)
def test_unbalanced_quote_reports_its_column(line: str, column: int) -> None:
    error = error_of(line)
    assert error.error_class == "SYNTAX"
    assert error.message == f"unbalanced quote at column {column}"


def test_tokenize_raises_the_same_errors() -> None:
    with pytest.raises(QueryError, match="unbalanced quote at column 3"):
        tokenize('a "b')


@pytest.mark.parametrize("line", ["COUNT x\\", "COUNT x\\\r", '"abc\\'])
def test_trailing_backslash_is_a_syntax_error(line: str) -> None:
    error = error_of(line)
    assert error.error_class == "SYNTAX"
    assert "trailing backslash" in error.message


# --- options and filters ---


def test_options_and_filters_are_told_apart() -> None:
    command = parsed("COUNT since=2024-01-01 action=signup user=u1 value=3 by=day tz=UTC")
    assert command.options == {"since": "2024-01-01", "by": "day", "tz": "UTC"}
    assert command.filters == (
        Filter("action", False, ("signup",)),
        Filter("user", False, ("u1",)),
        Filter("value", False, ("3",)),
    )


def test_keys_are_lower_cased_and_values_keep_case() -> None:
    command = parsed("COUNT ACTION=SignUp Limit=10 TZ=Europe/Paris")
    assert command.filters == (Filter("action", False, ("SignUp",)),)
    assert command.options == {"limit": "10", "tz": "Europe/Paris"}


def test_only_the_first_equals_splits() -> None:
    command = parsed("COUNT extra.q=a=b format=k=v")
    assert command.filters == (Filter("extra.q", False, ("a=b",)),)
    assert command.options == {"format": "k=v"}


def test_quoted_equals_makes_a_positional_arg() -> None:
    assert parsed('USER "a=b" a\\=b').args == ("a=b", "a=b")


def test_quoted_key_part_still_makes_a_key() -> None:
    assert parsed('COUNT "act"ion=x').filters == (Filter("action", False, ("x",)),)


def test_negated_filter() -> None:
    command = parsed("COUNT action!=login user!=bot*")
    assert command.filters == (
        Filter("action", True, ("login",)),
        Filter("user", True, ("bot*",)),
    )


def test_quoted_bang_is_part_of_the_key() -> None:
    assert parsed('COUNT since"!"=x').options == {"since!": "x"}


@pytest.mark.parametrize("line", ["COUNT since!=x", "COUNT LIMIT!=5", "COUNT extra!=5"])
def test_negated_option_is_an_arg_error(line: str) -> None:
    error = error_of(line)
    assert error.error_class == "ARG"
    assert "cannot be negated" in error.message


def test_comma_list_means_any_of() -> None:
    assert parsed("COUNT action=signup,login").filters == (
        Filter("action", False, ("signup", "login")),
    )


def test_negated_comma_list() -> None:
    assert parsed("COUNT action!=a,b,c").filters == (Filter("action", True, ("a", "b", "c")),)


@pytest.mark.parametrize(
    ("line", "values"),
    [
        ('COUNT action="a,b"', ("a,b",)),
        ('COUNT action="a,b",c', ("a,b", "c")),
        (r"COUNT action=a\,b,c", ("a,b", "c")),
        ('COUNT action=x,"y z"', ("x", "y z")),
    ],
)
def test_quoted_comma_is_part_of_the_value(line: str, values: tuple[str, ...]) -> None:
    assert parsed(line).filters == (Filter("action", False, values),)


def test_option_values_keep_commas() -> None:
    assert parsed("TOP by=action,user").options == {"by": "action,user"}


@pytest.mark.parametrize("value", ["sign*", "*", "*up", "a*b*c"])
def test_wildcards_are_kept_as_is(value: str) -> None:
    assert parsed(f"COUNT action={value}").filters == (Filter("action", False, (value,)),)


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("extra.page", "extra.page"),
        ("extra.page.path", "extra.page.path"),
        ("extra.a.b.c", "extra.a.b.c"),
        ("EXTRA.page", "extra.page"),
        ("extra.userAgent", "extra.userAgent"),
    ],
)
def test_dotted_extra_keys(key: str, field: str) -> None:
    assert parsed(f"COUNT {key}=x").filters == (Filter(field, False, ("x",)),)


def test_quoted_extra_value_with_spaces() -> None:
    assert parsed('COUNT extra.page="/a b"').filters == (Filter("extra.page", False, ("/a b",)),)


@pytest.mark.parametrize(
    "key", ["extra.", "extra..x", "extra.a.", "extra.a..b", "extra..", "EXTRA."]
)
def test_bad_extra_key_is_an_arg_error(key: str) -> None:
    error = error_of(f"COUNT {key}=x")
    assert error.error_class == "ARG"
    assert "extra.NAME" in error.message


def test_extra_without_a_dot_is_an_option() -> None:
    assert parsed("COUNT extra=x").options == {"extra": "x"}


def test_repeated_option_is_an_arg_error() -> None:
    error = error_of("COUNT limit=5 LIMIT=6")
    assert error.error_class == "ARG"
    assert error.message == "option 'limit' given twice"


def test_repeated_filter_field_makes_two_filters() -> None:
    assert parsed("COUNT action=a* action!=ab").filters == (
        Filter("action", False, ("a*",)),
        Filter("action", True, ("ab",)),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COUNT action=", "empty value for action"),
        ("COUNT action!=", "empty value for action"),
        ('COUNT user=""', "empty value for user"),
        ("COUNT limit=", "empty value for limit"),
        ("COUNT extra.page=", "empty value for extra.page"),
    ],
)
def test_empty_value_is_an_arg_error(line: str, message: str) -> None:
    error = error_of(line)
    assert error.error_class == "ARG"
    assert error.message == message


@pytest.mark.parametrize(
    "line", ["COUNT action=a,,b", "COUNT action=a,", "COUNT action=,a", 'COUNT action=a,""']
)
def test_empty_list_element_is_an_arg_error(line: str) -> None:
    error = error_of(line)
    assert error.error_class == "ARG"
    assert "empty element" in error.message
    assert "action" in error.message


@pytest.mark.parametrize("line", ["COUNT =x", "COUNT !=x", "COUNT ="])
def test_missing_key_is_an_arg_error(line: str) -> None:
    error = error_of(line)
    assert error.error_class == "ARG"
    assert "missing name" in error.message


def test_mixed_command_keeps_everything_in_order() -> None:
    command = parsed('top\tuser  action=buy,"sell all" n=3\textra.cart.size!=0 since=-1d\r\n')
    assert command == Command(
        verb="TOP",
        args=("user",),
        options={"n": "3", "since": "-1d"},
        filters=(
            Filter("action", False, ("buy", "sell all")),
            Filter("extra.cart.size", True, ("0",)),
        ),
    )


# --- SQL ---


def test_sql_takes_the_rest_of_the_line_raw() -> None:
    line = "SQL SELECT count(*) FROM events WHERE action = 'x'"
    assert parse(line) == Command(
        verb="SQL",
        args=("SELECT count(*) FROM events WHERE action = 'x'",),
        options={},
        filters=(),
    )


def test_sql_verb_is_case_insensitive_and_skips_blanks() -> None:
    assert parsed('  sql \t SELECT "a b" , \\x').args == ('SELECT "a b" , \\x',)


def test_sql_rest_is_not_tokenized_so_quotes_need_not_balance() -> None:
    assert parsed("SQL SELECT '\"' FROM events\r\n").args == ("SELECT '\"' FROM events",)


def test_sql_rest_keeps_inner_and_trailing_spacing() -> None:
    assert parsed("SQL SELECT  1  ").args == ("SELECT  1  ",)


def test_sql_alone_has_an_empty_query() -> None:
    assert parsed("SQL").args == ("",)


def test_a_verb_that_only_starts_with_sql_is_tokenized() -> None:
    assert parsed("SQLX a=b") == Command("SQLX", (), {"a": "b"}, ())


# --- error classes ---


def test_errors_become_one_status_line() -> None:
    assert error_of('COUNT "x').status_line() == "ERR SYNTAX unbalanced quote at column 7"
    assert error_of("COUNT since!=x").error_class == "ARG"
