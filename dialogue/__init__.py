"""The conversation: who speaks when, what the tutor is told, and the providers that answer.

`turntaking.TurnTaker` is a pure state machine (listening → transcribing → responding, barge-in);
`prompts` holds the tutor's system prompt; `providers/` adapts the `openai` SDK behind small
protocols so the rest of the code never knows which vendor answers.
"""
