"""collector.forward.stream and .handshake: choosing a connection's decoder, ack bytes,
and the HELO / PING / PONG exchange."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from collector.config import Config, ConfigError, load_config, render_toml
from collector.forward.handshake import Handshake
from collector.forward.stream import (
    MAX_OPENING_BYTES,
    StreamDecoder,
    StreamOpening,
    ack_reply,
    forward_stream_unpacker,
    holds_undecodable_text,
    speaks_forward,
)
from collector.settings import ForwardSettings

# --- which decoder a connection needs ------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"", None),
        (b"\xc0\xc0", None),
        (b"\x93", None),
        (b"\x93\xa3app", True),
        (b"\xc0\x93\xa3", True),
        (b"\xdc\x00\x03\xd9", True),
        (b"\xdd\x00\x00\x00\x03\xda", True),
        (b"\xdd\x00\x00\x00", None),
        (b"\x96\xa4PING", True),
        (b"\x91\x81", False),  # a native batch
        (b"\x81\xa6action", False),  # a native event
        (b"\x90\xa3", False),  # an empty array, then something else
        (b"\xdc\x00\x00\xa3", False),
        (b"\x93\x01", False),
        (b"\xc1", False),
    ],
)
def test_speaks_forward(head: bytes, expected: bool | None) -> None:
    assert speaks_forward(head) is expected


def test_opening_holds_bytes_until_it_can_decide() -> None:
    opening = StreamOpening()
    assert opening.take(b"\xc0") is None
    assert opening.take(b"\x93") is None
    assert opening.take(b"\xa3app") == (True, b"\xc0\x93\xa3app")
    assert opening.held == b""


def test_opening_decides_native_at_the_end_or_after_too_many_keepalives() -> None:
    assert StreamOpening().take(b"\xc0", final=True) == (False, b"\xc0")
    opening = StreamOpening()
    assert opening.take(b"\xc0" * (MAX_OPENING_BYTES - 1)) is None
    assert opening.take(b"\xc0") == (False, b"\xc0" * MAX_OPENING_BYTES)


# --- a connection's stream: every byte read is decoded, waiting, or given up ----------------


def test_stream_decoder_reports_each_object_with_its_size_and_offset() -> None:
    request = msgpack.packb(["app", 1, {}])
    event = msgpack.packb({"action": "a"})
    stream = StreamDecoder(1 << 20)
    assert stream.feed(b"\xc0") is False  # a keepalive cannot tell the decoder yet
    assert (stream.undecoded, stream.next_object()) == (1, None)
    assert stream.feed(request + event[:3]) is True
    assert stream.lenient is True
    assert stream.next_object() == (None, 1, 0)
    assert stream.next_object() == (["app", 1, {}], len(request), 1)
    assert stream.next_object() is None  # the event is incomplete
    assert (stream.decoded, stream.undecoded) == (1 + len(request), 3)
    stream.feed(event[3:])
    assert stream.next_object() == ({"action": "a"}, len(event), 1 + len(request))
    assert stream.undecoded == 0


def test_stream_decoder_discards_what_is_undecoded_once() -> None:
    stream = StreamDecoder(1 << 20)
    stream.feed(msgpack.packb({"action": "a"}) + b"\x81\xa1")
    assert stream.lenient is False
    assert stream.next_object() is not None
    assert stream.discard() == 2
    assert (stream.discard(), stream.undecoded) == (0, 0)
    held = StreamDecoder(1 << 20)
    held.feed(b"\xc0\xc0\x93")  # undecided: still held by the opening
    assert held.discard() == 3
    assert held.undecoded == 0


def test_stream_decoder_counts_bytes_it_cannot_hold_as_read() -> None:
    stream = StreamDecoder(1024)
    stream.feed(b"\x92\xa1t")
    with pytest.raises(msgpack.BufferFull):
        stream.feed(b"x" * 2000)
    assert stream.undecoded == 3 + 2000


def test_stream_decoder_raises_on_bytes_that_are_not_msgpack() -> None:
    stream = StreamDecoder(1024)
    stream.feed(msgpack.packb({"action": "a"}) + b"\xc1rest")
    assert stream.next_object() is not None
    with pytest.raises(ValueError):
        stream.next_object()
    assert stream.undecoded == 5


def test_forward_decoder_keeps_a_binary_str_blob_byte_exact() -> None:
    blob = bytes(range(256))
    unpacker = forward_stream_unpacker(1 << 20)
    unpacker.feed(b"\x92\xa1t\xda\x01\x00" + blob)
    [(tag, text)] = list(unpacker)
    assert tag == "t"
    assert text.encode("utf-8", "surrogateescape") == blob


def test_undecodable_text_is_found_anywhere_in_an_object() -> None:
    assert not holds_undecodable_text({"events": [{"action": "café"}], "ack": b"\xff"})
    assert holds_undecodable_text({"events": [{"action": "ok"}], "ack": "\udcff"})
    assert holds_undecodable_text([{"extra": {"k": ["\udc80"]}}])


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("p8n9gmxTQVC8/nh2wlKKeQ==", b"\x81\xa3ack\xb8p8n9gmxTQVC8/nh2wlKKeQ=="),
        (b"\x01\x02", b"\x81\xa3ack\xc4\x02\x01\x02"),
        ("\udcff", b"\x81\xa3ack\xa1\xff"),  # str that was not UTF-8: the same bytes back
        ("", b"\x81\xa3ack\xa0"),
    ],
)
def test_ack_reply_echoes_the_chunk_exactly(chunk: Any, expected: bytes) -> None:
    assert ack_reply(chunk) == expected


# --- settings ------------------------------------------------------------------------------


def test_settings_defaults_match_the_configuration_defaults() -> None:
    from_config = ForwardSettings.from_config(Config())
    assert from_config == ForwardSettings(hostname=from_config.hostname)
    assert from_config.hostname


def test_settings_from_configuration() -> None:
    config = Config(
        forward_action_field="event",
        forward_tag_key="fluent_tag",
        forward_shared_key="k",
        forward_hostname="collector.example",
        forward_max_decompressed_bytes=2048,
    )
    settings = ForwardSettings.from_config(config)
    assert (settings.action_field, settings.tag_key) == ("event", "fluent_tag")
    assert (settings.shared_key, settings.hostname) == ("k", "collector.example")
    assert settings.max_decompressed_bytes == 2048


def test_the_shared_key_is_a_secret_without_a_flag() -> None:
    with pytest.raises(ConfigError, match="forward_shared_key is secret"):
        load_config(flags={"forward_shared_key": "k"}, env={})
    config, _ = load_config(env={"COLLECTOR_FORWARD_SHARED_KEY": "k"})
    assert config.forward_shared_key == "k"
    assert 'forward_shared_key = "(set, not shown)"' in render_toml(config)


# --- handshake -----------------------------------------------------------------------------

KEY = "s3cret"


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping(handshake: Handshake, key: str = KEY, salt: Any = b"salt-bytes") -> list[Any]:
    salt_bytes = salt if isinstance(salt, bytes) else salt.encode()
    digest = sha512_hex(salt_bytes, b"client.example", handshake.nonce, key.encode())
    return ["PING", "client.example", salt, digest, "", ""]


def test_helo_offers_a_fresh_nonce_and_no_user_auth() -> None:
    first, second = Handshake(KEY, "server"), Handshake(KEY, "server")
    kind, options = first.helo()
    assert kind == "HELO"
    assert options == {"nonce": first.nonce, "auth": "", "keepalive": True}
    assert len(first.nonce) == 16
    assert first.nonce != second.nonce
    assert msgpack.packb(first.helo())[:6] == b"\x92\xa4HELO"


@pytest.mark.parametrize("salt", [b"\x00\xffbinary salt", "text salt"])
def test_a_good_ping_gets_a_pong_proving_the_server_knows_the_key(salt: Any) -> None:
    handshake = Handshake(KEY, "server.example")
    pong, refused = handshake.answer(ping(handshake, salt=salt))
    assert refused is None
    salt_bytes = salt if isinstance(salt, bytes) else salt.encode()
    expected = sha512_hex(salt_bytes, b"server.example", handshake.nonce, KEY.encode())
    assert pong == ["PONG", True, "", "server.example", expected]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("wrong key", "shared_key mismatch"),
        (["PING", "h", "s", "d", ""], "invalid ping message"),
        (["PONG", "h", "s", "d", "", ""], "invalid ping message"),
        (["PING", 1, "s", "d", "", ""], "invalid ping message"),
        ({"action": "native"}, "invalid ping message"),
        (["app", 1, {}], "invalid ping message"),
    ],
)
def test_a_bad_ping_gets_a_refusing_pong(message: Any, reason: str) -> None:
    handshake = Handshake(KEY, "server.example")
    if message == "wrong key":
        message = ping(handshake, key="guess")
    pong, refused = handshake.answer(message)
    assert refused == reason
    assert pong == ["PONG", False, reason, "", ""]
    assert handshake.refused
