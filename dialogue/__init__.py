"""The conversation: who speaks when and what the tutor is told.

`turntaking.TurnTaker` is a pure state machine (listening → transcribing → responding, barge-in);
`prompts` holds the tutor's system prompt. The services that answer (transcription, chat,
speech) are the top-level `providers` package.
"""
