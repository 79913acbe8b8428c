"""The collector-query console script (filled in below)."""


def main() -> int:
    return 0
