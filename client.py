"""The longsong client for scripts in this checkout; installed code imports `longsong.client`
(or `from longsong import LongsongClient`). `python client.py ...` runs the `longsong` CLI."""

from longsong.client import LongsongClient, SongFailed, SongHandle, SongSummary, connect

__all__ = ["LongsongClient", "SongFailed", "SongHandle", "SongSummary", "connect"]

if __name__ == "__main__":
    from longsong.cli import main

    main()
