"""How forward records become events, and the limits on forward requests."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from collector.config import Config

DEFAULT_MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """An empty field name turns that part of the mapping off."""

    action_field: str = "action"
    user_field: str = "user_id"
    value_field: str = "value"
    tag_key: str = "tag"
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    shared_key: str = ""
    hostname: str = field(default_factory=socket.gethostname)


def forward_settings(config: Config) -> ForwardSettings:
    return ForwardSettings(
        action_field=config.forward_action_field,
        user_field=config.forward_user_field,
        value_field=config.forward_value_field,
        tag_key=config.forward_tag_key,
        max_decompressed_bytes=config.forward_max_decompressed_bytes,
        shared_key=config.forward_shared_key,
        hostname=config.forward_hostname or socket.gethostname(),
    )
