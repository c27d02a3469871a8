"""Engine `procedural`: an offline arranger and synthesizer that needs no model weights.

Every sample is a pure function of the song parameters, the section timeline and the absolute
sample index on the song timeline: notes are events on an absolute 4/4 bar grid, drawn from
RNGs keyed by (song seed, bar, part, the seed of the bar's take), rendered whole from their own
onset and summed in a fixed order. A continuation window therefore re-generates its context region
exactly as the previous window ended it; a new section and the window's take (its own seed, so a
re-roll sounds different) only start at the first bar line of the window's new part, and no bar's
notes depend on a section that starts after it (a walking bass leads to the chord the bar knows of).

Modules, from the shared base up to the engine (each imports only those above it):
  song      `Song`, the sample rate, the step grid and its swing, the note `Event` every stage shares
  text      the prompt -> `Song` (genre, mood, instruments, tempo, key) and the section kind
  harmony   per bar: the section in effect (and a sectionless song's form), its arrangement, the chord
  drums     per bar: the drum groove of the section's level, its variation, phrase fills and crashes
  patterns  per bar: the note events of bass, pad or comping, lead, arpeggio, final cadence
  synth     the sounds: wavetables, timbres, envelopes, the drum kit, the reverb
  mix       the window's buses, sidechain, reverb send, soft clip and final fade
  engine    `ProceduralEngine.generate` and its hand-off `State`
"""

from longsong.engines.procedural.engine import ProceduralEngine

__all__ = ["ProceduralEngine"]
