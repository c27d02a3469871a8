"""longsong core: planning, DSP, engines and storage, with no Temporal in it.

This package must stay import-light: the workflow sandbox imports `longsong.request`
and `longsong.plan`, so nothing here may pull numpy, torch or ffmpeg at import time.
"""

__version__ = "0.1.0"
