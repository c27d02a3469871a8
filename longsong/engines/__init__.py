"""Music engines: each turns conditioning text (and a hand-off state) into one window of audio."""
