"""Window analysis: is a generated window fit to keep and continue from? Pure (numpy, scipy, librosa).

`report` is import-light (the workflow sandbox reads its dataclasses); the analyzers import librosa.
"""
