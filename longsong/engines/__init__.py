"""Music engines: each turns conditioning text (and a hand-off state) into one window of audio."""

ENGINE_NAMES = ("procedural", "musicgen")  # what a request may ask for and LONGSONG_ENGINES may serve
