"""The conversation's pure decisions: who speaks when, when to start work early, how a spoken
answer is cut and what of it was heard, and what the tutor is told.

`turntaking.TurnTaker` is the turn state machine (listening → transcribing → responding,
barge-in, the bounded history); `speculation.Speculator` decides speculative turn ends (a guess
at a pause, its caps and budget); `sentences` cuts streaming text into pieces for synthesis
(`SentenceSplitter`) and maps a playback position back to the words heard (`heard_text`);
`prompts` builds the tutor's prompt from a course's settings and assembles a request's messages,
a student's client's instructions inside the course's frame. None of it does
I/O or reads a clock: the providers that answer are in `providers`, the protocol core that drives
these is in `realtime`.
"""
